"""Robot-state (proprio) normalization: the same BOUNDS_Q99 mapping as actions, with the statistics
key's own `proprio` statistics (`dataset_statistics.json`), every dimension normalized.

Training (`vla.data.dataset`) and prediction (`OpenVLA.predict_action`, the onnxruntime policy) both
call `normalize_state`, so a state reaches the model the same way in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.model.action_tokenizer import StatisticsError, normalize


def proprio_stats(entry: dict[str, Any], key: str) -> dict[str, Any]:
    """The `proprio` statistics of one statistics key, with every dimension normalized."""
    stats = entry.get("proprio")
    if not isinstance(stats, dict) or not {"q01", "q99"} <= set(stats):
        raise StatisticsError(
            f"norm_stats[{key!r}] has no 'proprio' q01/q99 statistics, which a model with a state input needs"
        )
    return {"q01": stats["q01"], "q99": stats["q99"]}


def normalize_state(states: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """float32 [..., S] states in [-1, 1] (q01 -> -1, q99 -> 1, clipped)."""
    return normalize(states, stats).astype(np.float32)


def normalize_proprio(proprio: Any, entry: dict[str, Any], batch: int, key: str) -> np.ndarray:
    """A prediction's robot states (robot units, [B, S] or [S] for one row) -> float32 [B, S] normalized,
    with clear errors for a missing, mis-sized or non-finite state."""
    stats = proprio_stats(entry, key)
    size = len(stats["q01"])
    if proprio is None:
        raise ValueError(f"this model reads a {size}-value robot state: pass proprio/state [batch, {size}]")
    if hasattr(proprio, "detach"):
        proprio = proprio.detach().cpu().numpy()
    values = np.asarray(proprio, dtype=np.float64)
    if values.ndim == 1 and batch == 1:
        values = values[None]
    if values.shape != (batch, size):
        raise ValueError(f"robot state of shape {values.shape}; this model reads [batch={batch}, {size}]")
    if not np.isfinite(values).all():
        raise ValueError("robot state holds NaN or inf")
    return normalize_state(values, stats)
