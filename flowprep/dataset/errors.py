"""Errors of the dataset layer that more than one of its modules raises."""


class SourceError(RuntimeError):
    """The row's video cannot be found; the message says where it was looked for."""
