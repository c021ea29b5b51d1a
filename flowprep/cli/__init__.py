"""Command line: ``flowprep <command>``.  Imports downward only; nothing below reads argv or env."""

from flowprep.cli.main import main

__all__ = ["main"]
