"""Load pickled teleop demos without letting the file run code.

A pickle can name any importable callable and have the unpickler call it (`os.system`, `builtins.eval`,
...). `RestrictedUnpickler.find_class` is the one place the unpickler turns a name into an object, so it
only answers for an allowlist: numpy arrays, dtypes and scalars, builtin containers and scalars, and
datetime objects. The allowlist maps names to objects directly, so no module is imported on behalf of
the file. Any other name raises `UnsafePickleError` before anything from the file has been called.
"""

from __future__ import annotations

import _codecs
import datetime
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.episodes import DataError


class UnsafePickleError(DataError):
    """A pickle references a global outside the allowlist; nothing in it was run."""


def _numpy_internal(name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles from either name the module they were made with.
    for package in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ImportError:
            continue
    raise ImportError(f"numpy has neither numpy._core.{name} nor numpy.core.{name}")


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Protocol 0-2 pickles store bytes as `_codecs.encode(text, "latin1")`; other codecs are not needed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return _codecs.encode(text, encoding)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_internal("multiarray"), _numpy_internal("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy._core", "numpy.core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    # Scalar types (numpy.float32, ...) and numpy 2's dtype classes (numpy.dtypes.Float32DType, ...).
    for name, value in vars(np).items():
        if isinstance(value, type) and issubclass(value, np.generic):
            allowed[("numpy", name)] = value
    for name, value in vars(np.dtypes).items():
        if isinstance(value, type) and issubclass(value, np.dtype):
            allowed[("numpy.dtypes", name)] = value
    for value in (set, frozenset, bytearray, bytes, complex, dict, list, tuple, str, int, float, bool):
        allowed[("builtins", value.__name__)] = value
        # Protocols 0-2 write Python 2's module name (pickle's fix_imports); our find_class maps it back.
        allowed[("__builtin__", value.__name__)] = value
    for value in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone):
        allowed[("datetime", value.__name__)] = value
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `ALLOWED_GLOBALS`; `path` is named in its errors."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: pickle references forbidden global '{module}.{name}'; only numpy arrays and "
                "dtypes, builtin containers and scalars, and datetime objects are allowed. "
                "Nothing from the file was run."
            ) from None


def safe_load_pickle(path: Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; corrupt or truncated files raise a DataError."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ... for truncated or corrupt data
        raise DataError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from exc
