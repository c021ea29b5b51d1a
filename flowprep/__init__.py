"""flowprep: action-recognition videos to zarr stores of RGB and TV-L1 flow, for two-stream I3D."""

__version__ = "0.1.0"


def open_store(path):
    """Open a flowprep zarr store for reading (see flowprep.store.Store)."""
    from flowprep.store import open_store as _open

    return _open(path)
