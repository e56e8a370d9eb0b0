"""The messages between the policy server and its robot clients: msgpack maps, numpy arrays inside.

An array travels as a map {"__ndarray__": True, "dtype": "<f4", "shape": [...], "data": bytes}: exact
(the client gets the bits the policy produced) and cheap (one copy of the buffer). Only plain numeric
dtypes are accepted when decoding, so a request cannot make the server build object arrays.

Messages (every one a map with "type"):
    server -> client on connect   {"type": "metadata", ...PolicyInfo fields..., "protocol": VERSION}
    client -> server              {"type": "infer", "id", "image": uint8 [H, W, 3], "instruction",
                                   "state": [S] or absent, "step": control tick of the observation}
    server -> client              {"type": "actions", "id", "step", "actions": [K, D], "timing": {...}}
    client -> server              {"type": "health", "id"}  ->  {"type": "health", "id", "ok", ...}
    server -> client on a bad request  {"type": "error", "id" (if readable), "error": "what was wrong"}
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

VERSION = 1
# dtypes an array in a message may have: numbers and booleans only (never object or void).
_DTYPE_KINDS = "biuf"


class WireError(ValueError):
    """A message that cannot be decoded (not msgpack, not a map, a malformed array)."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _DTYPE_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}")
        array = np.ascontiguousarray(obj)
        return {
            "__ndarray__": True,
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "data": array.tobytes(),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if obj.get("__ndarray__") is not True:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(n) for n in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"malformed array in message: {error}") from None
    if dtype.kind not in _DTYPE_KINDS or not isinstance(data, bytes | bytearray):
        raise WireError(f"array of dtype {dtype} is not accepted (numbers only)")
    if any(n < 0 for n in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise WireError(f"array data of {len(data)} bytes does not fill shape {list(shape)} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def pack(message: dict) -> bytes:
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(payload: bytes | str) -> dict:
    """A received message; anything that is not a msgpack map raises WireError."""
    if not isinstance(payload, bytes | bytearray):
        raise WireError("messages are binary msgpack frames, not text")
    try:
        message = msgpack.unpackb(payload, object_hook=_decode, raw=False, strict_map_key=True)
    except WireError:
        raise
    except Exception as error:  # msgpack raises several types for garbage; all mean the same here
        raise WireError(f"not a msgpack message ({type(error).__name__})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise WireError("a message is a map with a 'type' string")
    return message
