"""The in-memory episode both seed data formats load into, and the validation they share.

An `Episode` is one demonstration: T steps of (image, proprio state, action) plus its instruction. The
loaders (`vla.data.isaac`, `vla.data.pickle_demos`) check everything that is cheap to check when they
load (shapes, step counts, finiteness, that every image file exists and has a readable header), so bad
data is found before training starts; only the full decode of file-based frames is left to `frame()`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image

# DataError lives with the limits (vla.data.limits); the loaders import it from here.
from vla.data.limits import DataError, check_image_size, check_instruction, read_image  # noqa: F401
from vla.data.video import LazyFrames

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A complete JPEG ends with the end-of-image marker; PIL's verify() does not notice a missing tail.
_JPEG_EOI = b"\xff\xd9"


class SkippedEpisode(NamedTuple):
    """An episode (or a whole pickle file) left out with `on_error="skip"`, and why."""

    episode_id: str
    reason: str


@dataclass
class Episode:
    """One demonstration, T steps long.

    Step t pairs the observation (frame t, `states[t]`) with the action to take, `actions[t]`.
    Exactly one of `frame_paths` (image files, decoded lazily), `video` (encoded frames such as a clip of
    a video file, decoded lazily) and `frames` (held in memory) is set: the frames of camera `camera`, the model's input.
    Other cameras of the episode are in `cameras`, not decoded until `camera_frames(name)`.
    """

    episode_id: str
    """Unique within a dataset: the folder name (Isaac), `<file name>#<index>` (pickle demos),
    `episode_<index>` (LeRobot) or `<file name>#<demo>` (HDF5)."""
    source: Literal["isaac", "pickle", "lerobot", "hdf5"]
    """Which loader produced the episode."""
    path: Path
    """The episode folder (Isaac), the pickle or HDF5 file holding it, or the LeRobot dataset's root;
    error messages name it."""
    instruction: str
    """The language instruction used for training (see each loader for which one is chosen)."""
    instructions: list[str]
    """Every distinct instruction the episode carries, `instruction` first (for augmentation)."""
    actions: np.ndarray
    """float32 [T, D]."""
    states: np.ndarray
    """float32 [T, S]; S may be 0 when the episode has no proprio state."""
    success: bool | None = None
    """Whether the episode succeeded; None when the format does not record it."""
    fps: float | None = None
    timestamps: np.ndarray | None = None
    """float64 [T] when the episode records per-step times."""
    frame_paths: list[Path] | None = None
    """T image files (PNG/JPEG), one per step."""
    frames: np.ndarray | None = None
    """uint8 [T, H, W, 3] RGB."""
    video: LazyFrames | None = None
    """T encoded frames decoded on access (`vla.data.video.LazyFrames`): a clip of a video file
    (LeRobot's MP4s) or LeRobot images stored inside Parquet."""
    camera: str | None = None
    """Which camera the frames are, where the format names its cameras (LeRobot's feature key, the
    HDF5 observation key)."""
    cameras: dict[str, Any] = field(default_factory=dict)
    """The episode's other cameras by name, each T frames not yet decoded: a `VideoClip`, an in-memory
    uint8 [T, H, W, 3] array, or any object whose `load()` returns one (`vla.data.hdf5.H5Frames`)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Everything else the source recorded (e.g. Isaac's `seed`, `joint_names`, a demo's `timestamp`)."""
    step_instructions: list[str] | None = None
    """Per-step instruction, len T, when annotation is on (`vla.data.annotate`); None: `instruction`
    for every step."""

    def __post_init__(self) -> None:
        where = f"episode {self.episode_id!r} ({self.path})"
        for text in [self.instruction, *self.instructions]:
            check_instruction(text, where)
        if self.actions.ndim != 2 or self.actions.dtype != np.float32:
            raise DataError(
                f"{where}: actions must be float32 [T, D], got {self.actions.dtype} {self.actions.shape}"
            )
        if self.states.ndim != 2 or len(self.states) != len(self.actions):
            raise DataError(f"{where}: states {self.states.shape} do not match actions {self.actions.shape}")
        if sum(source is not None for source in (self.frame_paths, self.frames, self.video)) != 1:
            raise DataError(f"{where}: exactly one of frame_paths, frames and video must be set")
        if self.frames is not None and (
            self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[3] != 3
        ):
            raise DataError(
                f"{where}: frames must be uint8 [T, H, W, 3], got {self.frames.dtype} {self.frames.shape}"
            )
        if self.frame_paths is not None:
            num_frames = len(self.frame_paths)
        else:
            num_frames = len(self.frames) if self.frames is not None else self.video.num_frames
        if num_frames != len(self.actions):
            raise DataError(f"{where}: {num_frames} frames but {len(self.actions)} actions")
        if self.step_instructions is not None and (
            len(self.step_instructions) != len(self.actions)
            or not all(isinstance(text, str) and text.strip() for text in self.step_instructions)
        ):
            raise DataError(
                f"{where}: step_instructions must be {len(self.actions)} non-empty strings (one per step), "
                f"got {len(self.step_instructions)}"
            )

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    def instruction_at(self, t: int) -> str:
        """The instruction step t trains on: its annotation when there is one, else `instruction`."""
        return self.instruction if self.step_instructions is None else self.step_instructions[t]

    def frame(self, t: int) -> np.ndarray:
        """Frame t as uint8 [H, W, 3] RGB. In-memory frames are returned as a view: do not modify it."""
        if not 0 <= t < self.num_steps:
            raise IndexError(f"episode {self.episode_id!r} has {self.num_steps} steps, asked for step {t}")
        if self.frames is not None:
            return self.frames[t]
        if self.video is not None:
            return self.video.load()[t]  # decoded once for its T frames (the last clip is kept)
        return read_image(self.frame_paths[t], f"episode {self.episode_id!r}")

    def camera_frames(self, name: str) -> np.ndarray:
        """All T frames of camera `name` (the model's `camera` or one of `cameras`), uint8 [T, H, W, 3]."""
        if name == self.camera:
            return np.stack([self.frame(t) for t in range(self.num_steps)])
        if name not in self.cameras:
            known = [c for c in (self.camera, *self.cameras) if c is not None]
            raise KeyError(f"episode {self.episode_id!r} has no camera {name!r}; it has {known}")
        source = self.cameras[name]
        frames = source if isinstance(source, np.ndarray) else source.load()
        if len(frames) != self.num_steps:
            raise DataError(
                f"episode {self.episode_id!r} ({self.path}): camera {name!r} has {len(frames)} frames "
                f"for {self.num_steps} steps"
            )
        return frames


@dataclass
class LoadResult:
    """What a loader returns: the usable episodes, in a deterministic order, and what was left out."""

    episodes: list[Episode]
    skipped: list[SkippedEpisode] = field(default_factory=list)
    """Bad episodes left out with `on_error="skip"`, with the reason for each."""


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def record_skip(skipped: list[SkippedEpisode], episode_id: str, error: Exception) -> None:
    """Note a bad episode left out with `on_error="skip"`, in the result and in the log."""
    logger.warning("Skipping episode %s: %s", episode_id, error)
    skipped.append(SkippedEpisode(episode_id, str(error)))


def skip_or_raise(
    error: Exception,
    on_error: str,
    skipped: list[SkippedEpisode],
    episode_id: str,
    cause: Exception | None = None,
) -> None:
    """What every reader does with a bad episode or file: raise `error` (from `cause`, when given) with
    `on_error="raise"`, else leave it out and note it (`record_skip`)."""
    if on_error == "raise":
        if cause is not None:
            raise error from cause
        raise error
    record_skip(skipped, episode_id, error)


def natural_sort_key(path: Path) -> list[int | str]:
    """Sort `frame_2` before `frame_10`; zero-padded names sort the same either way."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def as_float_matrix(value: Any, *, key: str, where: str, num_rows: int | None = None) -> np.ndarray:
    """`value` as a finite float32 [T, D] array, or a DataError naming `where` and `key`."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged nested lists and the like
        raise DataError(f"{where}: {key!r} is not a numeric array: {exc}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{where}: {key!r} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DataError(f"{where}: {key!r} must be 2-D [T, D], got shape {array.shape}")
    if num_rows is not None and len(array) != num_rows:
        raise DataError(f"{where}: {key!r} has {len(array)} steps, expected {num_rows}")
    # Converting first also catches float64 values that overflow float32 to inf.
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        step, dim = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: {key!r} has {int(bad.sum())} non-finite values (NaN/inf), "
            f"first at step {step}, dim {dim}"
        )
    return array


def check_image_file(path: Path, *, where: str) -> None:
    """Cheap check that `path` is a complete PNG/JPEG: its header parses, without decoding pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; our own limit (check_image_size) is lower and an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            image_format = image.format
            check_image_size(image, f"{where}: image {path}")
            # PNG: checks every chunk's CRC, so a truncated file fails. JPEG: verify() checks little.
            image.verify()
        if image_format == "JPEG":
            size = path.stat().st_size
            with open(path, "rb") as handle:
                handle.seek(max(0, size - 64))
                if _JPEG_EOI not in handle.read():
                    raise DataError(f"{where}: image {path} is truncated (no JPEG end-of-image marker)")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: image {path} is unreadable: {type(exc).__name__}: {exc}") from exc


def drop_inconsistent_dims(
    episodes: list[Episode],
    *,
    expected_action_dim: int | None,
    expected_state_dim: int | None,
    on_error: OnError,
    skipped: list[SkippedEpisode],
) -> list[Episode]:
    """Episodes whose action and state dimensions agree with the expected (else the most common) ones.

    Without an expected dimension the most common one wins (ties: the earliest episode's), so with
    `on_error="skip"` one odd episode sorted first cannot get every other episode skipped.
    """
    references = {}
    for name, expected in (("action", expected_action_dim), ("state", expected_state_dim)):
        dims = [getattr(episode, f"{name}_dim") for episode in episodes]
        if expected is not None:
            references[name] = (expected, f"expected_{name}_dim={expected}")
        elif dims:
            dim = Counter(dims).most_common(1)[0][0]
            first = episodes[dims.index(dim)].episode_id
            references[name] = (dim, f"{dim} in {dims.count(dim)} of {len(dims)} episodes, e.g. {first!r}")
    kept = []
    for episode in episodes:
        problems = [
            f"{name} dimension {getattr(episode, f'{name}_dim')} differs from {description}"
            for name, (dim, description) in references.items()
            if getattr(episode, f"{name}_dim") != dim
        ]
        if not problems:
            kept.append(episode)
            continue
        error = DataError(f"episode {episode.episode_id!r} ({episode.path}): {'; '.join(problems)}")
        skip_or_raise(error, on_error, skipped, episode.episode_id)
    return kept


def finish_loading(
    episodes: list[Episode],
    skipped: list[SkippedEpisode],
    *,
    expected_action_dim: int | None,
    expected_state_dim: int | None,
    on_error: OnError,
    empty: str,
) -> LoadResult:
    """Every loader's last step: the episodes whose sizes agree (`drop_inconsistent_dims`), or a
    DataError `empty` (what was read, and why nothing is left) when none is usable."""
    episodes = drop_inconsistent_dims(
        episodes,
        expected_action_dim=expected_action_dim,
        expected_state_dim=expected_state_dim,
        on_error=on_error,
        skipped=skipped,
    )
    if not episodes:
        raise DataError(f"{empty} ({len(skipped)} skipped: {[s.episode_id for s in skipped]})")
    return LoadResult(episodes=episodes, skipped=skipped)
