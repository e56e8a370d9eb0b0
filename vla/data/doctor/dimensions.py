"""Per-dimension checks over every frame of the actions or the states: constant dimensions, q01 == q99,
outliers, step jumps, unit mix-ups, frozen dimensions and gripper ranges.

Every check reads one `Group`: the float64 values of all frames of all episodes, concatenated, with the
episode each frame belongs to, so each finding can name its episodes, steps and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vla.config.doctor import DoctorSettings
from vla.data.doctor.findings import Finding, listed


@dataclass
class Group:
    """All frames of one kind ("action" or "state") of the checked episodes (each at least one step)."""

    kind: str
    names: list[str]
    values: np.ndarray
    """float64 [N, D]: every frame of every episode, in episode order."""
    bounds: np.ndarray
    """int [E + 1]: episode e's frames are values[bounds[e]:bounds[e + 1]]."""
    episode_ids: list[str]

    @classmethod
    def of(cls, kind: str, arrays: list[np.ndarray], names: list[str], episode_ids: list[str]) -> Group:
        bounds = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
        return cls(kind, names, np.concatenate(arrays).astype(np.float64), bounds, episode_ids)

    @cached_property
    def frame_episode(self) -> np.ndarray:
        """int [N]: the episode index of each frame."""
        return np.repeat(np.arange(len(self.episode_ids)), np.diff(self.bounds))

    def where(self, frame: int) -> str:
        """`<episode id> step <t>` of a frame index."""
        e = int(np.searchsorted(self.bounds, frame, side="right") - 1)
        return f"{self.episode_ids[e]} step {frame - self.bounds[e]}"

    def dim(self, d: int) -> str:
        return f"{self.kind}/{self.names[d]}"

    def per_episode(self, ufunc: np.ufunc, values: np.ndarray | None = None) -> np.ndarray:
        """[E, D]: `ufunc` reduced over each episode's frames (e.g. np.maximum: each episode's max)."""
        return ufunc.reduceat(self.values if values is None else values, self.bounds[:-1], axis=0)


def check_group(
    group: Group,
    summary: dict,
    settings: DoctorSettings,
    *,
    outlier_k: float | None,
    max_jump: float | None,
    unit_limit: float | None,
    mask: list[bool] | None = None,
) -> list[Finding]:
    """Every per-dimension check of one group. `summary` holds its exact statistics (min, max, q01,
    q99 lists, `vla.data.statistics`); `mask` (actions) is False on the dimensions left un-normalized."""
    lo, hi = np.asarray(summary["min"]), np.asarray(summary["max"])
    q01, q99 = np.asarray(summary["q01"]), np.asarray(summary["q99"])
    normalized = np.ones(len(lo), bool) if mask is None else np.asarray(mask, bool)
    findings = constant_dims(group, lo, hi) + quantile_collapse(group, lo, hi, q01, q99, normalized, settings)
    if outlier_k is not None:
        findings += outliers(group, q01, q99, outlier_k, settings)
    if max_jump is not None:
        findings += jumps(group, q01, q99, max_jump, settings)
    if unit_limit is not None:
        findings += unit_mixups(group, unit_limit, settings)
    findings += frozen_dims(group, settings)
    if mask is not None:
        findings += gripper_ranges(group, mask, settings)
    return findings


def constant_dims(group: Group, lo: np.ndarray, hi: np.ndarray) -> list[Finding]:
    dims = np.flatnonzero(lo == hi)
    if not len(dims):
        return []
    values = ", ".join(f"{group.names[d]}={lo[d]:.4g}" for d in dims)
    return [
        Finding(
            "constant",
            "info",
            f"{len(dims)} {group.kind} dimension(s) hold one value in all {len(group.values)} frames "
            f"({values}): unused, they carry no signal; q01/q99 normalization maps them to one value (-1; "
            "OpenVLA's RLDS loader uses 0) that un-normalizes back to the constant exactly.",
            dims=[group.dim(d) for d in dims],
        )
    ]


def quantile_collapse(
    group: Group,
    lo: np.ndarray,
    hi: np.ndarray,
    q01: np.ndarray,
    q99: np.ndarray,
    normalized: np.ndarray,
    settings: DoctorSettings,
) -> list[Finding]:
    """Only normalized dimensions: a masked one (a gripper closed in under 1% of the frames) passes
    through un-normalized, and its q01/q99 are not used."""
    findings = []
    for d in np.flatnonzero((q01 == q99) & (lo < hi) & normalized):
        other = group.values[:, d] != q01[d]
        episodes = sorted({group.episode_ids[e] for e in np.unique(group.frame_episode[other])})
        findings.append(
            Finding(
                "quantile_collapse",
                "error",
                f"{group.kind} {group.names[d]}: q01 == q99 == {q01[d]:.4g} while the values span "
                f"[{lo[d]:.4g}, {hi[d]:.4g}]: {1 - other.mean():.1%} of the frames hold that one value, so "
                f"q01/q99 normalization clips the other {int(other.sum())} frames (in "
                f"{len(episodes)} episode(s): {listed(episodes, settings.max_listed)}) to +-1 and the "
                "policy can never produce them. Mask the dimension (data.mask_dims) or fix the data.",
                episodes=episodes,
                dims=[group.dim(d)],
            )
        )
    return findings


def outliers(
    group: Group, q01: np.ndarray, q99: np.ndarray, k: float, settings: DoctorSettings
) -> list[Finding]:
    span = q99 - q01
    dims = np.flatnonzero(span > 0)
    x = group.values[:, dims]
    distance = np.maximum(q01[dims] - x, x - q99[dims]) / span[dims]  # in ranges beyond [q01, q99]
    findings = []
    frame_episode = group.frame_episode
    for column, d in enumerate(dims):
        bad = np.flatnonzero(distance[:, column] > k)
        if not len(bad):
            continue
        far = bad[np.argmax(distance[bad, column])]
        episodes = [group.episode_ids[e] for e in np.unique(frame_episode[bad])]
        findings.append(
            Finding(
                "outlier",
                "warning",
                f"{group.kind} {group.names[d]}: {len(bad)} frame(s) in {len(episodes)} episode(s) lie more "
                f"than {k:g} q01..q99 ranges outside [q01, q99] = [{q01[d]:.4g}, {q99[d]:.4g}]; the "
                f"farthest, {group.values[far, d]:.4g} ({distance[far, column]:.1f} ranges out), at "
                f"{group.where(far)}. Episodes: {listed(episodes, settings.max_listed)}.",
                episodes=episodes,
                dims=[group.dim(d)],
            )
        )
    return findings


def jumps(
    group: Group, q01: np.ndarray, q99: np.ndarray, max_jump: float, settings: DoctorSettings
) -> list[Finding]:
    span = q99 - q01
    frame_episode = group.frame_episode
    same_episode = frame_episode[1:] == frame_episode[:-1]
    step = np.abs(np.diff(group.values, axis=0))
    findings = []
    for d in np.flatnonzero(span > 0):
        bad = np.flatnonzero(same_episode & (step[:, d] > max_jump * span[d]))
        if not len(bad):
            continue
        big = bad[np.argmax(step[bad, d])]
        episodes = [group.episode_ids[e] for e in np.unique(frame_episode[bad])]
        findings.append(
            Finding(
                "jump",
                "warning",
                f"{group.kind} {group.names[d]}: {len(bad)} step(s) in {len(episodes)} episode(s) change by "
                f"more than {max_jump:g} x its q01..q99 range ({max_jump * span[d]:.4g}); the largest, "
                f"{group.values[big, d]:.4g} -> {group.values[big + 1, d]:.4g}, after {group.where(big)}: "
                f"a unit switch or a dropped segment? Episodes: {listed(episodes, settings.max_listed)}.",
                episodes=episodes,
                dims=[group.dim(d)],
            )
        )
    return findings


def unit_mixups(group: Group, limit: float, settings: DoctorSettings) -> list[Finding]:
    largest = group.per_episode(np.maximum, np.abs(group.values))  # [E, D]
    typical = np.median(largest, axis=0)
    findings = []
    for d in np.flatnonzero(typical <= limit):
        bad = np.flatnonzero(largest[:, d] > limit)
        if not len(bad):
            continue
        worst = bad[np.argmax(largest[bad, d])]
        ratio = f", {largest[worst, d] / typical[d]:.0f}x the median episode's" if typical[d] > 0 else ""
        episodes = [group.episode_ids[e] for e in bad]
        findings.append(
            Finding(
                "unit_mixup",
                "error",
                f"{group.kind} {group.names[d]}: {len(bad)} episode(s) reach |x| > {limit:.4g} (more than a "
                f"full turn in radians) while the median episode's largest |x| is {typical[d]:.4g}; the "
                f"largest, {largest[worst, d]:.4g}{ratio}, in {group.episode_ids[worst]}: degrees among "
                f"radians (x 57.3) or another unit mix-up? Episodes: {listed(episodes, settings.max_listed)}.",
                episodes=episodes,
                dims=[group.dim(d)],
            )
        )
    return findings


def frozen_dims(group: Group, settings: DoctorSettings) -> list[Finding]:
    lengths = np.diff(group.bounds)
    moves = group.per_episode(np.maximum) > group.per_episode(np.minimum)  # [E, D]
    judged = lengths >= 2
    if not judged.any():
        return []
    share = moves[judged].mean(axis=0)
    findings = []
    for d in np.flatnonzero(share >= settings.frozen_share):
        bad = np.flatnonzero(judged & ~moves[:, d])
        if not len(bad):
            continue
        first = bad[0]
        episodes = [group.episode_ids[e] for e in bad]
        findings.append(
            Finding(
                "frozen",
                "warning",
                f"{group.kind} {group.names[d]}: one value for all steps in {len(bad)} episode(s) (e.g. "
                f"{group.episode_ids[first]}: {group.values[group.bounds[first], d]:.4g} for "
                f"{lengths[first]} steps) while it moves in {share[d]:.0%} of the episodes: a dead sensor "
                f"or a column lost in a conversion? Episodes: {listed(episodes, settings.max_listed)}.",
                episodes=episodes,
                dims=[group.dim(d)],
            )
        )
    return findings


def gripper_ranges(group: Group, mask: list[bool], settings: DoctorSettings) -> list[Finding]:
    findings = []
    frame_episode = group.frame_episode
    for d in range(group.values.shape[1]):
        column = group.values[:, d]
        values = np.unique(column)
        # Binary: exactly two values in the whole dataset. (Joint targets that hold poses also sit at
        # two values most of the time, but pass through others on the way: the sample data's do.)
        binary = len(values) == 2
        named = "gripper" in group.names[d].lower()
        masked = not mask[d]  # OpenVLA's mask: True = normalized; False = passed through (grippers)
        if not (binary or named or masked):
            continue
        reasons = [f"only the values {values[0]:.4g} and {values[1]:.4g}"] if binary else []
        reasons += ["its name"] * named + ["in data.mask_dims"] * masked
        why = ", ".join(reasons)
        outside = (column < -1) | (column > 1)
        if outside.any():
            episodes = [group.episode_ids[e] for e in np.unique(frame_episode[outside])]
            effect = (
                "a masked dimension is passed through un-normalized, so values outside [-1, 1] are clipped"
                if masked
                else "OpenVLA expects a gripper in [0, 1] or [-1, 1] (rescale it, or mask it with "
                "data.mask_dims after rescaling)"
            )
            findings.append(
                Finding(
                    "gripper_range",
                    "error" if masked else "warning",
                    f"action {group.names[d]} looks like a gripper ({why}) but spans [{column.min():.4g}, "
                    f"{column.max():.4g}], outside [-1, 1] in {int(outside.sum())} frames of {len(episodes)} "
                    f"episode(s): {effect}. Episodes: {listed(episodes, settings.max_listed)}.",
                    episodes=episodes,
                    dims=[group.dim(d)],
                )
            )
        elif not masked:
            findings.append(
                Finding(
                    "gripper_unmasked",
                    "info",
                    f"action {group.names[d]} looks like a gripper ({why}) and is normalized with q01/q99; "
                    f"OpenVLA leaves grippers un-normalized: data.mask_dims=[{d}] does that.",
                    dims=[group.dim(d)],
                )
            )
    return findings
