"""Load pickled teleop demos into `Episode`s.

A pickle file holds a list of demos, each `{"instruction": str, "frames": [frame, ...], "timestamp": ...}`
(optionally `"success": bool`, as `vla.data.recorder` and `vla.sim.episodes` write it) with `frame = {"image": uint8 [H, W, 3], "robot_state": [S], "action": [A], "gripper": scalar or [G]}`.
Files are read with `vla.data.safe_pickle`, which refuses to run anything a file references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vla.data.episodes import (
    DataError,
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    as_float_matrix,
    check_on_error,
    finish_loading,
    natural_sort_key,
    skip_or_raise,
)
from vla.data.limits import check_instruction
from vla.data.safe_pickle import UnsafePickleError, safe_load_pickle

PICKLE_SUFFIXES = (".pkl", ".pickle")


def load_pickle_demos(
    path: str | Path,
    *,
    join_gripper: bool = True,
    next_action: bool = True,
    on_error: OnError = "raise",
    expected_action_dim: int | None = None,
    expected_state_dim: int | None = None,
) -> LoadResult:
    """Load every demo in a pickle file, or in each `*.pkl` / `*.pickle` file of a folder (natural order).

    Args:
        path: a pickle file or a folder of them.
        join_gripper: the action is `action` followed by `gripper`; False drops the gripper.
        next_action: pair frame i's image and state with frame i+1's action, as the seed's teleop loader
            does (the recorded action of a frame is the command that produced it, so the command that
            follows observation i is the next frame's); a demo of N frames gives N-1 steps. False pairs
            frame i with its own action (N steps).
        on_error: "raise" raises a `DataError` at the first bad demo; "skip" leaves bad demos (or whole
            unreadable files) out and lists them in `LoadResult.skipped`. A file that references a
            forbidden global always raises `UnsafePickleError`: it may be hostile and a person should look.
        expected_action_dim, expected_state_dim: required dimensions (e.g. the model's statistics);
            without them every demo must match the most common dimension.

    Episode ids are `<file name>#<demo index>`; `success` is the demo's optional `success` key (None
    when the demo does not record it).
    """
    check_on_error(on_error)
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES), key=natural_sort_key
        )
        if not files:
            raise DataError(f"{path}: no pickle files ({', '.join(PICKLE_SUFFIXES)}) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or folder")

    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    for file in files:
        try:
            demos = safe_load_pickle(file)
            if not isinstance(demos, (list, tuple)):
                raise DataError(f"{file}: expected a list of demos, got {type(demos).__name__}")
        except DataError as error:
            # A pickle that would run code is refused whatever on_error says.
            skip_or_raise(
                error, "raise" if isinstance(error, UnsafePickleError) else on_error, skipped, file.name
            )
            continue
        for index, demo in enumerate(demos):
            episode_id = f"{file.name}#{index}"
            try:
                try:
                    episodes.append(_demo_to_episode(demo, episode_id, file, join_gripper, next_action))
                except RecursionError:  # a structure nested past what the checks walk
                    raise DataError(f"demo {episode_id!r} ({file}): nested too deeply to read") from None
            except DataError as error:
                skip_or_raise(error, on_error, skipped, episode_id)

    return finish_loading(
        episodes,
        skipped,
        expected_action_dim=expected_action_dim,
        expected_state_dim=expected_state_dim,
        on_error=on_error,
        empty=f"{path}: no usable demos",
    )


def _demo_to_episode(
    demo: Any, episode_id: str, file: Path, join_gripper: bool, next_action: bool
) -> Episode:
    where = f"demo {episode_id!r} ({file})"
    if not isinstance(demo, dict):
        raise DataError(f"{where}: expected a dict, got {type(demo).__name__}")
    for key in ("instruction", "frames"):
        if key not in demo:
            raise DataError(f"{where}: missing key {key!r}")
    instruction, frames = demo["instruction"], demo["frames"]
    success = demo.get("success")  # optional key of the format, not a config default
    if success is not None and not isinstance(success, bool):
        raise DataError(f"{where}: 'success' must be True or False when present, got {success!r}")
    check_instruction(instruction, f"{where}: 'instruction'")  # non-empty, MAX_INSTRUCTION_CHARS at most
    if not isinstance(frames, (list, tuple)):
        raise DataError(f"{where}: 'frames' must be a list, got {type(frames).__name__}")
    min_frames = 2 if next_action else 1
    if len(frames) < min_frames:
        raise DataError(
            f"{where}: {len(frames)} frames; need at least {min_frames} (next_action={next_action})"
        )

    required = ("image", "robot_state", "action") + (("gripper",) if join_gripper else ())
    images, states, actions = [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DataError(f"{where}: frame {i} is a {type(frame).__name__}, expected a dict")
        for key in required:
            if key not in frame:
                raise DataError(f"{where}: frame {i} is missing key {key!r}")
        image = frame["image"]
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            description = (
                f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            )
            raise DataError(f"{where}: frame {i} 'image' must be uint8 [H, W, 3] RGB, got {description}")
        if images and image.shape != images[0].shape:
            raise DataError(f"{where}: frame {i} 'image' is {image.shape}, frame 0's is {images[0].shape}")
        images.append(image)
        states.append(_as_vector(frame["robot_state"], f"{where}: frame {i} 'robot_state'"))
        action = _as_vector(frame["action"], f"{where}: frame {i} 'action'")
        if join_gripper:
            action = np.concatenate([action, _as_vector(frame["gripper"], f"{where}: frame {i} 'gripper'")])
        actions.append(action)

    for key, rows in (("robot_state", states), ("action", actions)):
        lengths = {len(row) for row in rows}
        if len(lengths) > 1:
            first_odd = next(i for i, row in enumerate(rows) if len(row) != len(rows[0]))
            raise DataError(
                f"{where}: frame {first_odd} {key!r} has {len(rows[first_odd])} values, "
                f"frame 0 has {len(rows[0])}"
            )
    # next_action: observation i (image, state) -> action recorded at frame i+1.
    observed = slice(0, len(frames) - 1) if next_action else slice(0, len(frames))
    commanded = slice(1, len(frames)) if next_action else slice(0, len(frames))
    return Episode(
        episode_id=episode_id,
        source="pickle",
        path=file,
        instruction=instruction,
        instructions=[instruction],
        actions=as_float_matrix(np.stack(actions[commanded]), key="action", where=where),
        states=as_float_matrix(np.stack(states[observed]), key="robot_state", where=where),
        frames=np.stack(images[observed]),
        success=success,
        metadata={key: value for key, value in demo.items() if key not in ("instruction", "frames")},
    )


def _as_vector(value: Any, what: str) -> np.ndarray:
    """A 1-D numeric array of `value` (a scalar gripper becomes one value)."""
    try:
        array = np.atleast_1d(np.asarray(value))
    except Exception as exc:
        raise DataError(f"{what} is not numeric: {exc}") from exc
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{what} must be a 1-D numeric array, got {array.dtype} {array.shape}")
    # Checked per frame so the error names the recorded frame, not the step it became after pairing.
    bad = ~np.isfinite(array.astype(np.float32))
    if bad.any():
        raise DataError(f"{what} has non-finite values (NaN/inf) at dims {np.flatnonzero(bad).tolist()}")
    return array
