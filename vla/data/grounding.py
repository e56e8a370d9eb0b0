"""Grounding targets: numbers about the scene that the policy predicts before its actions.

Embodied chain-of-thought (ECoT, Zawalski et al. 2024) trains OpenVLA to write out what it sees (object
boxes, the gripper's position) before the action tokens, so the actions can attend to it. With
`model.layout.grounding=N` each sample's labels become N grounding tokens, then the action chunk, then `</s>`;
the prompt is unchanged, and at prediction time the model writes the N tokens first
(`OpenVLA.predict_action` returns them as `ActionPrediction.grounding`).

An episode's N values, each in [-1, 1] (binned like actions, 256 bins), come from its metadata:
`"grounding": [v1, ..., vN]` (any dataset: e.g. object positions normalised to the workspace), or, for
the simulator's reach_ball episodes, the balls' positions (`reach_grounding`, 8 values).

The continuous head (`model.action_head=l1`) predicts the values as an auxiliary target beside the
actions rather than as tokens. With either head an episode may have none (`optional=True`: NaN values;
its samples keep the G positions but carry no grounding loss), so a dataset mixing reach scenes with
other tasks still trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vla.config.sim import BALL_NAMES, BALL_REGION_Y, BALL_REGION_Z
from vla.data.episodes import DataError, Episode


def reach_grounding(balls: dict[str, list[float] | np.ndarray], color: str) -> np.ndarray:
    """[8] values in [-1, 1] of a simulator reach scene (metadata 'balls', 'color'): every ball's sideways
    (y) and height (z) position within the region balls are placed in, in BALL_NAMES order (red y, red z,
    green y, ...), then the named ball's y and z. The camera shows these two well and depth (x) hardly,
    so x is left out."""
    missing = [c for c in (*BALL_NAMES, color) if c not in balls]
    if missing:
        raise ValueError(f"balls {sorted(balls)} lack {missing}")
    y_mid, y_half = (BALL_REGION_Y[0] + BALL_REGION_Y[1]) / 2, (BALL_REGION_Y[1] - BALL_REGION_Y[0]) / 2
    z_mid, z_half = (BALL_REGION_Z[0] + BALL_REGION_Z[1]) / 2, (BALL_REGION_Z[1] - BALL_REGION_Z[0]) / 2
    values = []
    for name in (*BALL_NAMES, color):
        _, y, z = np.asarray(balls[name], dtype=np.float64)
        values += [(y - y_mid) / y_half, (z - z_mid) / z_half]
    return np.clip(np.array(values), -1.0, 1.0)


def has_grounding(episode: Episode) -> bool:
    """Whether `episode`'s metadata gives grounding targets (a 'grounding' list or a reach scene)."""
    meta = episode.metadata
    return "grounding" in meta or (
        meta.get("task") == "reach_ball" and isinstance(meta.get("balls"), dict) and "color" in meta
    )


def episode_grounding(episode: Episode, size: int) -> np.ndarray:
    """float64 [size] grounding values of `episode`, or a DataError naming the episode and the key."""
    where = f"episode {episode.episode_id!r} ({episode.path})"
    meta = episode.metadata
    if "grounding" in meta:
        raw = meta["grounding"]
        source = "metadata 'grounding'"
        # A JSON list (Isaac metadata.json) or a list, tuple or numpy array (a pickled demo's key).
        values = None
        try:
            if isinstance(raw, list | tuple | np.ndarray) and not any(isinstance(v, bool | str) for v in raw):
                values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):  # ragged or non-numeric entries, a 0-d array
            pass
        if values is None or values.ndim != 1 or not np.isfinite(values).all():
            raise DataError(f"{where}: {source} must be a list of finite numbers, got {raw!r}")
    elif meta.get("task") == "reach_ball" and isinstance(meta.get("balls"), dict) and "color" in meta:
        source = "the reach scene's balls"
        try:
            values = reach_grounding(meta["balls"], meta["color"])
        except (ValueError, TypeError) as err:
            raise DataError(
                f"{where}: metadata 'balls'/'color' do not describe a reach scene: {err}"
            ) from None
    else:
        raise DataError(
            f"{where}: model.layout.grounding={size} needs grounding targets, but its metadata has no 'grounding' "
            "list (N numbers in [-1, 1]) and it is not a simulator reach_ball episode (task, balls, color)"
        )
    if values.shape != (size,):
        raise DataError(f"{where}: {source} gives {values.size} values, model.layout.grounding={size}")
    if np.abs(values).max() > 1.0:
        raise DataError(f"{where}: {source} has values outside [-1, 1]: {values.round(3).tolist()}")
    return values


def dataset_grounding(
    episodes: Sequence[Episode], size: int, optional: bool = False, require_any: bool = True
) -> list[np.ndarray]:
    """`episode_grounding` of every episode (size 0: empty arrays, grounding off). `optional`: an
    episode without targets (`has_grounding`) gets NaN values instead of an error; a dataset in which no
    episode has any is still an error (the grounding would learn nothing) unless `require_any` is False
    (a validation split of a dataset whose training split has some)."""
    if size == 0:
        return [np.zeros(0) for _ in episodes]
    if not optional:
        return [episode_grounding(ep, size) for ep in episodes]
    if require_any and episodes and not any(has_grounding(ep) for ep in episodes):
        try:
            episode_grounding(episodes[0], size)  # raises the DataError that says what is missing
        except DataError as error:
            raise DataError(
                f"{error}; none of the {len(episodes)} episodes has any (data=sample: only reach_ball "
                "scenes do): train without grounding with model.layout.grounding=0"
            ) from None
    return [episode_grounding(ep, size) if has_grounding(ep) else np.full(size, np.nan) for ep in episodes]
