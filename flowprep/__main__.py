"""``python -m flowprep``: the ``flowprep`` command (flowprep.cli.main), for a venv without the console script."""

from flowprep.cli.main import main

raise SystemExit(main())
