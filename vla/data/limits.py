"""Bounded readers for everything that comes from outside: each limit is checked from a file's header,
before the memory it asks for is allocated, and fails with a `DataError` naming the file and what to
do. docs/limits.md lists the limits and what each message means.

- images: the declared width x height (PIL reads it from the header) against `MAX_IMAGE_PIXELS`; the
  pixel modes a camera writes are converted to uint8 RGB as documented in `image_to_rgb8`.
- npz archives: every member's npy header (shape, dtype) against `MAX_ARRAY_BYTES`, before reading it.
- JSON: the file size against `MAX_JSON_BYTES` and the nesting depth against `MAX_JSON_DEPTH`, counted
  without parsing (the parser recurses, and a deep file would raise a bare RecursionError).
- instructions: `MAX_INSTRUCTION_CHARS` characters and not empty.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# A 4K camera frame is 8.3 M pixels; a 2-bit PNG can declare 50 G pixels in 100 bytes. PIL's own guard
# (Image.MAX_IMAGE_PIXELS) only warns below twice its limit; this one is ours and always refuses.
MAX_IMAGE_PIXELS = 40_000_000
# One array of an episode's npz (actions, states, timestamps): 100,000 steps x 1,000 float64 values.
MAX_ARRAY_BYTES = 1 << 30
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64
# Far above any robot command; the model's positions bound it further (`check_prompt_tokens`).
MAX_INSTRUCTION_CHARS = 1_000


class DataError(ValueError):
    """Training data that cannot be used; the message names the file, episode or key at fault."""


# -- images ----------------------------------------------------------------------------------------


def check_image_size(image: Image.Image, where: str) -> None:
    """Refuse an image whose header declares more than MAX_IMAGE_PIXELS (nothing decoded yet)."""
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{where}: the image declares {width} x {height} pixels; at most {MAX_IMAGE_PIXELS:,} "
            "are read (resize it, or check that the file is what it claims to be)"
        )


def image_to_rgb8(image: Image.Image, where: str) -> np.ndarray:
    """A decoded PIL image as uint8 [H, W, 3] RGB:

    - RGB, L (grey), P (palette), CMYK, YCbCr: Pillow's conversion to RGB;
    - RGBA, LA, PA and P with transparency: the alpha channel is dropped (the colour is kept as stored,
      not composited on a background);
    - 16-bit grey (I;16, I;16B, I;16L, I) and float (F): scaled from their full range to 8 bits
      (value * 255 / 65535 for 16-bit; F must lie in [0, 1]), then grey -> RGB. Pillow's own convert
      clips them at 255, which turns a 16-bit frame white.
    - 1 (bilevel): black and white.
    Anything else is refused naming the mode.
    """
    mode = image.mode
    if mode in ("RGB", "L", "P", "CMYK", "YCbCr", "1", "RGBA", "LA", "PA", "RGBX"):
        if mode in ("P", "PA"):
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise DataError(f"{where}: {mode} image with values outside 0..65535; convert it to 8-bit RGB")
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise DataError(f"{where}: float (F) image with values outside [0, 1]; convert it to 8-bit RGB")
        grey8 = np.round(grey * 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    raise DataError(f"{where}: image mode {mode!r} is not supported; save the frame as 8-bit RGB PNG or JPEG")


def read_image(path: str | Path, where: str | None = None) -> np.ndarray:
    """The image file `path` as uint8 [H, W, 3] RGB: size checked from the header, then decoded
    (a truncated file fails instead of being zero-filled), then converted by `image_to_rgb8`."""
    where = where or str(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; our own limit (checked next) is lower and an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            check_image_size(image, f"{where}: image {path}")
            image.load()
            return image_to_rgb8(image, f"{where}: image {path}")
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image {path} refused: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt data; the file is what matters
        raise DataError(f"{where}: cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


# -- npz -------------------------------------------------------------------------------------------


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of an npz archive, each checked from its npy header (shape x itemsize against
    MAX_ARRAY_BYTES, no object dtype) before it is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if not members:
                raise DataError(f"{where}: {path.name} holds no .npy arrays (not an npz archive?)")
            arrays = {}
            for member in members:
                key = member.filename[: -len(".npy")]
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = _NPY_HEADERS.get(version)
                    if read_header is None:
                        raise DataError(
                            f"{where}: {path.name}[{key!r}] is npy format {version}; save it with numpy.savez"
                        )
                    shape, _, dtype = read_header(handle)
                    if dtype.hasobject:
                        raise DataError(
                            f"{where}: {path.name}[{key!r}] holds Python objects; arrays must be numeric"
                        )
                    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if nbytes > MAX_ARRAY_BYTES:
                        raise DataError(
                            f"{where}: {path.name}[{key!r}] declares shape {shape} of {dtype} "
                            f"({nbytes / 2**30:.1f} GiB); at most {MAX_ARRAY_BYTES / 2**30:.0f} GiB per array"
                        )
                with archive.open(member) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
            return arrays
    except DataError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, ValueError ... for corrupt files
        raise DataError(f"{where}: cannot read {path.name}: {type(exc).__name__}: {exc}") from exc


# -- JSON ------------------------------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of [ and { in a JSON text (strings left out), without parsing it."""
    stripped = _JSON_STRING.sub(b'""', raw)
    codes = np.frombuffer(stripped, dtype=np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def load_json(path: Path, where: str) -> Any:
    """A JSON file with its size and nesting bounded (MAX_JSON_BYTES, MAX_JSON_DEPTH)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DataError(f"{where}: {path} is {size:,} bytes; at most {MAX_JSON_BYTES:,} are read")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: cannot read {path}: {exc}") from exc
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise DataError(f"{where}: {path} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{where}: {path} is not valid JSON: {exc}") from exc


# -- instructions ----------------------------------------------------------------------------------


def check_instruction(text: Any, where: str) -> str:
    """`text` if it is a non-empty string of at most MAX_INSTRUCTION_CHARS characters."""
    if not isinstance(text, str) or not text.strip():
        got = repr(text) if isinstance(text, str) else type(text).__name__
        raise DataError(f"{where}: the instruction must be a non-empty string, got {got[:40]}")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise DataError(
            f"{where}: the instruction has {len(text):,} characters; at most {MAX_INSTRUCTION_CHARS:,} "
            f"(it starts {text[:40]!r})"
        )
    return text


def check_prompt_tokens(n_tokens: int, max_positions: int, where: str) -> None:
    """A sequence of `n_tokens` positions must fit the language model's `max_positions`."""
    if n_tokens > max_positions:
        raise DataError(
            f"{where}: the prompt, image and action tokens need {n_tokens} positions; the language model "
            f"has {max_positions} (max_position_embeddings): shorten the instruction"
        )
