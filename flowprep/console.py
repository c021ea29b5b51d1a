"""The one way commands report a user's mistake: a one-line message on stderr and exit status 2."""

from __future__ import annotations

import sys

EXIT_OK, EXIT_ROWS_FAILED, EXIT_USAGE = 0, 1, 2


def usage_error(msg: str) -> int:
    """Print ``flowprep: error: msg`` (one line) and return the exit status 2."""
    print(f"flowprep: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return EXIT_USAGE
