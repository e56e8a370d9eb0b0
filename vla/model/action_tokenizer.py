"""Actions as tokens, exactly as OpenVLA does it, for any action dimension.

Actions are normalized per dimension to [-1, 1] with the 1st/99th percentiles of the training data
(`norm_stats[key]["action"]`, OpenVLA's `dataset_statistics.json` format), discretized into 256
uniform bins, and bin i is the token `vocab_size - 1 - i`: the last 256 ids of the unpadded vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StatisticsError(KeyError):
    """Missing or inconsistent normalization statistics; the message names the key."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class ActionTokenizer:
    """Maps normalized actions in [-1, 1] to token ids and back."""

    def __init__(self, vocab_size: int, n_bins: int = 256):
        self.vocab_size = int(vocab_size)
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        # 255 centres: OpenVLA decodes with the midpoints between neighbouring bin edges.
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_action_token(self) -> int:
        return self.vocab_size - self.n_bins

    @property
    def last_action_token(self) -> int:
        return self.vocab_size - 1

    def encode(self, normalized: np.ndarray) -> np.ndarray:
        """Token ids for normalized actions (any shape); values outside [-1, 1] are clipped."""
        clipped = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        # np.digitize gives 1..256 here; OpenVLA's token is vocab_size - digitize = vocab_size - 1 - bin.
        return (self.vocab_size - np.digitize(clipped, self.bins)).astype(np.int64)

    def bin_indices(self, token_ids: np.ndarray) -> np.ndarray:
        # Any id outside the action range is clipped to an extreme bin, as in OpenVLA.
        raw = self.vocab_size - np.asarray(token_ids, dtype=np.int64) - 1
        return np.clip(raw, 0, self.bin_centers.shape[0] - 1)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Normalized actions (float64) for token ids."""
        return self.bin_centers[self.bin_indices(token_ids)]


def action_stats(norm_stats: dict[str, Any], unnorm_key: str | None) -> tuple[str, dict[str, Any]]:
    """The key and `action` statistics to use. `unnorm_key` may be omitted only when there is
    exactly one key; OpenVLA asserts here, we name the keys that exist."""
    if not norm_stats:
        raise StatisticsError("the model has no normalization statistics (norm_stats is empty)")
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise StatisticsError(
                f"the model has statistics for several datasets; pass unnorm_key, one of {sorted(norm_stats)}"
            )
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise StatisticsError(f"unnorm_key {unnorm_key!r} not found; available keys: {sorted(norm_stats)}")
    entry = norm_stats[unnorm_key]
    if "action" not in entry:
        raise StatisticsError(f"norm_stats[{unnorm_key!r}] has no 'action' entry")
    for key in ("q01", "q99"):
        if key not in entry["action"]:
            raise StatisticsError(f"norm_stats[{unnorm_key!r}]['action'] has no {key!r}")
    return unnorm_key, entry["action"]


def _bounds(stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = np.asarray(stats["q01"], dtype=np.float64)
    high = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if not (low.shape == high.shape == mask.shape):
        raise StatisticsError(f"q01 {low.shape}, q99 {high.shape} and mask {mask.shape} differ in size")
    return low, high, mask


def normalize(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """OpenVLA's BOUNDS_Q99: 2 * (x - q01) / (q99 - q01 + 1e-8) - 1, clipped to [-1, 1], on the
    masked dimensions only; unmasked ones (grippers) pass through unchanged."""
    low, high, mask = _bounds(stats)
    x = np.asarray(actions, dtype=np.float64)
    if x.shape[-1] != low.shape[0]:
        raise StatisticsError(f"actions have {x.shape[-1]} dimensions, the statistics {low.shape[0]}")
    scaled = np.clip(2.0 * (x - low) / (high - low + 1e-8) - 1.0, -1.0, 1.0)
    return np.where(mask, scaled, x)


def unnormalize(normalized: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Back to robot units on masked dimensions; unmasked ones stay in [-1, 1] (as in OpenVLA)."""
    low, high, mask = _bounds(stats)
    x = np.asarray(normalized, dtype=np.float64)
    return np.where(mask, 0.5 * (x + 1.0) * (high - low) + low, x)
