"""Store layer: the on-disk format (zarr v3, FORMAT.md), the staging writer and the reader.

Touches only ``<name>.zarr/`` and the staging folder the run state hands its writer.
"""

from flowprep.store.zarr_store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Store,
    StoreError,
    VideoWriter,
    WriteConfig,
    create_store,
    is_complete,
    open_store,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Store",
    "StoreError",
    "VideoWriter",
    "WriteConfig",
    "create_store",
    "is_complete",
    "open_store",
]
