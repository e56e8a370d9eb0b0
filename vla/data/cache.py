"""Decode each training frame once: a memory-mapped uint8 cache at the model's input size.

Decoding PNG/JPEG files is the usual bottleneck of VLA data loading (LeRobot reports 20x slowdowns,
lerobot #2549). File-based episodes (Isaac, the simulated sample data) are decoded and resized once
(OpenVLA's resize, `ImageTransform.resize`) into `<cache_dir>/frames/<entry>.npy`, uint8 [T, S, S, 3],
read back with `np.load(mmap_mode="r")`: no decoding, and the OS page cache shares the pages between
DataLoader workers. Each entry has a JSON index beside it recording what it was built from: every
source file's (path, size, mtime_ns) and the preprocessing settings (image size, resize mode, Pillow's
version). An entry is used only when its index matches exactly; otherwise it is rebuilt.

Writes are atomic: the index is removed first, the array is written to a temporary sibling and renamed,
then the index is written the same way. An interrupted build therefore leaves no index (or one that no
longer matches), and the next run rebuilds that entry.

Episodes whose frames are kept encoded (`Episode.video`: a clip of a video file, LeRobot's images stored
in Parquet) are cached the same way: the index records their fingerprint (the file's path, size and
mtime_ns and the episode's span), so a video is decoded once, not once per epoch. Episodes whose frames
are already in memory (pickle demos, HDF5) have no per-frame source files; they are resized once into
memory instead of going to disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from tqdm import tqdm

from vla.data.episodes import Episode

log = logging.getLogger(__name__)

CACHE_VERSION = 1
Resize = Callable[[np.ndarray], np.ndarray]


def cache_settings(image_size: int) -> dict[str, Any]:
    """What the cached pixels depend on besides the source files."""
    return {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "resize": "resize-naive/bicubic",  # ImageTransform.resize
        "pillow": PIL.__version__,  # resampling may change between Pillow releases
    }


def source_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    """(path, size, mtime_ns) of each source file: a changed or replaced file changes it."""
    out = []
    for path in paths:
        stat = os.stat(path)
        out.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def entry_name(episode: Episode) -> str:
    """One cache entry per episode (and camera): a stable name, so a rebuild replaces the stale entry."""
    where = f"{Path(episode.path).resolve()}#{episode.episode_id}"
    if episode.camera is not None:
        where += f"#{episode.camera}"
    return hashlib.sha256(where.encode()).hexdigest()[:24]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _index_matches(index_path: Path, expected: dict[str, Any]) -> bool:
    try:
        return json.loads(index_path.read_text()) == expected
    except (OSError, json.JSONDecodeError):
        return False


def build_entry(episode: Episode, resize: Resize, array_path: Path, index_path: Path, index: dict) -> None:
    """Decode and resize every frame of `episode` into `array_path`, then write its index."""
    index_path.unlink(missing_ok=True)  # from here on the entry is invalid until the new index lands
    size = index["settings"]["image_size"]
    frames = np.empty((episode.num_steps, size, size, 3), dtype=np.uint8)
    for t in range(episode.num_steps):
        frames[t] = resize(episode.frame(t))

    def save_array(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, frames)

    _write_atomic(array_path, save_array)
    _write_atomic(index_path, lambda tmp: tmp.write_text(json.dumps(index)))


class FrameCache:
    """Per episode, its frames as uint8 [T, S, S, 3]: memory-mapped cache files or in-memory arrays.

    `frames[e][t]` is frame t of episode e. The memory maps are opened lazily in each process and are
    not pickled, so DataLoader workers (fork or spawn) each map the files themselves.
    """

    def __init__(self, sources: list[Path | np.ndarray]):
        self.sources = sources
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, e: int) -> np.ndarray:
        source = self.sources[e]
        if isinstance(source, np.ndarray):
            return source
        if e not in self._maps:
            self._maps[e] = np.load(source, mmap_mode="r")
        return self._maps[e]

    def subset(self, start: int, stop: int) -> FrameCache:
        """The cache of episodes start..stop-1 (e.g. one split of the episodes it was built for)."""
        return FrameCache(self.sources[start:stop])

    def __getstate__(self) -> dict[str, Any]:
        return {"sources": self.sources, "_maps": {}}


def build_frame_cache(
    episodes: Sequence[Episode],
    resize: Resize,
    image_size: int,
    cache_dir: str | Path,
    progress: bool = True,
) -> FrameCache:
    """The frame cache for `episodes`, building (or rebuilding) the entries that are missing or stale.

    `resize` maps a decoded uint8 frame to uint8 [image_size, image_size, 3] (the model processor's
    `image_transform.resize`).
    """
    folder = Path(cache_dir) / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    settings = cache_settings(image_size)
    sources: list[Path | np.ndarray | None] = [None] * len(episodes)
    stale: list[tuple[int, Path, Path, dict]] = []
    for e, episode in enumerate(episodes):
        if episode.frames is not None:  # in memory already: resize once, keep in memory
            sources[e] = np.stack([resize(episode.frames[t]) for t in range(episode.num_steps)])
            continue
        name = entry_name(episode)
        array_path, index_path = folder / f"{name}.npy", folder / f"{name}.json"
        index = {
            "settings": settings,
            "episode_id": episode.episode_id,
            "shape": [episode.num_steps, image_size, image_size, 3],
            "files": source_fingerprint(episode.frame_paths)
            if episode.video is None
            else [episode.video.fingerprint()],
        }
        sources[e] = array_path
        if not (array_path.is_file() and _index_matches(index_path, index)):
            stale.append((e, array_path, index_path, index))
    if stale:
        frames = sum(episodes[e].num_steps for e, *_ in stale)
        log.info("image cache: decoding %d frames of %d episodes into %s", frames, len(stale), folder)
        bar = tqdm(total=frames, desc="image cache", unit="frame", disable=not progress)
        for e, array_path, index_path, index in stale:
            build_entry(episodes[e], resize, array_path, index_path, index)
            bar.update(episodes[e].num_steps)
        bar.close()
    return FrameCache(sources)
