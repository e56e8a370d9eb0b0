"""Load pickled teleop demos without letting the file run code.

A pickle can name any importable callable and have the unpickler call it (`os.system`, `builtins.eval`,
...). `RestrictedUnpickler.find_class` is the one place the unpickler turns a name into an object, so it
only answers for an allowlist: numpy arrays, dtypes and scalars, builtin containers and scalars, and
datetime objects. The allowlist maps names to objects directly, so no module is imported on behalf of
the file. Any other name raises `UnsafePickleError` before anything from the file has been called.

Memory and depth are bounded before the real load (`scan_pickle`): the opcode stream is walked once
with a reader that refuses any length prefix longer than what is left of the file, and the unpickler's
stack (how deeply containers nest) may not exceed MAX_PICKLE_DEPTH. During the load, the allowed
callables that allocate from a number (bytearray(n), numpy.ndarray(shape), numpy.void(n), a dtype of
n bytes, ...) may not ask for more bytes than the file holds: arrays built from the file's own bytes
are bounded by its size, so a larger request can only be a decompression bomb.
"""

from __future__ import annotations

import _codecs
import datetime
import functools
import importlib
import os
import pickle
import pickletools
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
# Demos nest list -> dict -> frames list -> dict -> array arguments: a few tens of levels.
MAX_PICKLE_DEPTH = 200
# The allowed callables that can allocate from a number in their arguments (bytearray(n),
# numpy.ndarray(shape), numpy.void(n), numpy.dtype(("V", n)), _reconstruct(ndarray, shape, dtype), ...);
# the others build from objects the file already holds. Classes outside this set stay classes (a pickle
# may hold numpy.float32 or a dtype class as a value).
_ALLOCATING = {bytearray, bytes, np.ndarray, np.dtype, np.void, np.bytes_, np.str_}
_ALLOCATING |= {
    value
    for (module, _), value in ALLOWED_GLOBALS.items()
    if module.startswith("numpy") and not isinstance(value, type)
}


def _requested_bytes(value: Any) -> int:
    """Bytes an argument can make a callable allocate: an int n, a shape's product, a dtype's size."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | np.integer):
        return abs(int(value))
    if isinstance(value, np.dtype):
        return value.itemsize
    if (
        isinstance(value, tuple | list)
        and value
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
    ):
        total = 1
        for v in value:
            total *= abs(int(v))
        return total
    return 0


def _guarded(call: Any, path: Path, budget: int) -> Any:
    """`call` refusing arguments that ask for more than `budget` bytes (the file's size)."""

    @functools.wraps(call)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        # A guarded class given as an argument (numpy.ndarray to _reconstruct) is the class itself.
        args = tuple(a.__wrapped__ if getattr(a, "_guarded", False) else a for a in args)
        values = [*args, *kwargs.values()]
        itemsize = max([v.itemsize for v in values if isinstance(v, np.dtype)] or [1])
        requested = max([_requested_bytes(v) for v in values] or [0])
        if requested * itemsize > budget:
            raise DataError(
                f"{path}: pickle asks {getattr(call, '__name__', call)} for {requested * itemsize:,} bytes, "
                f"more than the file's {budget:,}; refused before allocating (a decompression bomb?)"
            )
        result = call(*args, **kwargs)
        if isinstance(result, np.dtype) and result.itemsize > budget:
            raise DataError(f"{path}: pickle builds a dtype of {result.itemsize:,} bytes; refused")
        return result

    guarded._guarded = True
    return guarded


class _BoundedReader:
    """A file whose reads may not ask for more than is left: a length prefix larger than the file
    would otherwise make the reader allocate it first."""

    def __init__(self, handle: Any, size: int, path: Path) -> None:
        self.handle, self.left, self.path = handle, size, path

    def read(self, n: int = -1) -> bytes:
        if n > self.left:
            raise pickle.UnpicklingError(
                f"a length prefix asks for {n:,} bytes with {self.left:,} left in the file (truncated or forged)"
            )
        data = self.handle.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.handle.readline(self.left)
        self.left -= len(line)
        return line


def scan_pickle(path: Path, max_depth: int = MAX_PICKLE_DEPTH) -> None:
    """Walk the opcodes of `path` without building anything: every length prefix must fit in the file
    and the stack (container nesting) may not grow deeper than `max_depth`."""
    size = os.path.getsize(path)
    depth, marks = 0, []
    with open(path, "rb") as handle:
        for opcode, _, _ in pickletools.genops(_BoundedReader(handle, size, path)):
            before, after = opcode.stack_before, opcode.stack_after
            if pickletools.markobject in before:  # pops everything down to the last MARK
                depth = marks.pop() if marks else 0
                before = before[: before.index(pickletools.markobject)]
            depth = max(0, depth - len(before))
            if pickletools.markobject in after:
                marks.append(depth)
            else:
                depth += len(after)
            if depth + len(marks) > max_depth:
                raise DataError(
                    f"{path}: the pickle nests more than {max_depth} levels deep; refused before loading "
                    "(demos need a few tens)"
                )


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `ALLOWED_GLOBALS`; `path` is named in its errors."""

    def __init__(self, file: Any, path: Path, budget: int | None = None) -> None:
        super().__init__(file)
        self.path = path
        # What an allocating callable may ask for: the file's size (at least 1 MiB for small files).
        self.budget = max(budget if budget is not None else os.path.getsize(path), 1 << 20)

    def find_class(self, module: str, name: str) -> Any:
        try:
            value = ALLOWED_GLOBALS[(module, name)]
            return _guarded(value, self.path, self.budget) if value in _ALLOCATING else value
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: pickle references forbidden global '{module}.{name}'; only numpy arrays and "
                "dtypes, builtin containers and scalars, and datetime objects are allowed. "
                "Nothing from the file was run."
            ) from None


def safe_load_pickle(path: Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler` after `scan_pickle`; corrupt, truncated, too deep or
    too large files raise a DataError naming the file."""
    try:
        scan_pickle(path)
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{path}: the pickle nests too deeply to load") from None
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ... for truncated or corrupt data
        raise DataError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from exc
