"""The store's error type, apart so that the writer, the reader and ``verify`` share it without a cycle."""


class StoreError(RuntimeError):
    """A store cannot be opened, read or written; the message says why and what to do."""
