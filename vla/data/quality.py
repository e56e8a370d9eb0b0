"""Episode quality filter: drop episodes that would teach the policy nothing or something wrong.

Rules, checked in this order; an episode is dropped by the first one that fires and the drop is logged
with its id and the reason:
    non_finite    NaN/inf in `actions` or `states` (the loaders reject these on load; episodes built in
                  memory, e.g. by `vla.data.recorder`, may still hold them)
    unsuccessful  `success` is False and `data.success_only` is on. An episode whose format does not
                  record success (`success` None) is then an error, not a drop: nothing can be concluded.
    too_short     fewer than `min_length` steps
    too_long      more than `max_length` steps
    static        mean over state dimensions of the per-dimension variance over time below
                  `min_state_variance`: the robot barely moved. Episodes without state dimensions cannot
                  be judged: they are kept and counted as `static_unjudged`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from vla.config import FilterConfig
from vla.data.episodes import DataError, Episode

log = logging.getLogger(__name__)

RULES = ("non_finite", "unsuccessful", "too_short", "too_long", "static")


class DroppedEpisode(NamedTuple):
    episode_id: str
    rule: str
    """One of `RULES`."""
    reason: str


class FilterResult(NamedTuple):
    """`kept, dropped = filter_episodes(...)`; `report()` gives the counts."""

    kept: list[Episode]
    dropped: list[DroppedEpisode]
    static_unjudged: int = 0
    """Kept episodes the static rule could not judge (no state dimensions)."""

    def report(self) -> dict[str, int]:
        """`{"episodes", "kept", "dropped", "dropped/<rule>" for every rule, "static_unjudged"}`."""
        counts = {f"dropped/{rule}": 0 for rule in RULES}
        for drop in self.dropped:
            counts[f"dropped/{drop.rule}"] += 1
        return {
            "episodes": len(self.kept) + len(self.dropped),
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            **counts,
            "static_unjudged": self.static_unjudged,
        }


def filter_episodes(
    episodes: list[Episode], cfg: FilterConfig, *, success_only: bool = False
) -> FilterResult:
    """Apply the quality rules (see the module docstring); kept episodes are returned unchanged, in order.

    Raises `DataError` when `success_only` is on and an episode does not record its success, and when
    no episode is left (naming how many each rule dropped).
    """
    kept: list[Episode] = []
    dropped: list[DroppedEpisode] = []
    unjudged = 0
    for episode in episodes:
        rule_reason = _first_failing_rule(episode, cfg, success_only)
        if rule_reason is None:
            kept.append(episode)
            if episode.state_dim == 0 and cfg.min_state_variance > 0:
                unjudged += 1
            continue
        rule, reason = rule_reason
        log.warning("quality filter: dropping episode %s (%s): %s", episode.episode_id, rule, reason)
        dropped.append(DroppedEpisode(episode.episode_id, rule, reason))
    result = FilterResult(kept, dropped, unjudged)
    counts = result.report()
    if unjudged:
        log.info(
            "quality filter: %d episode(s) have no state dimensions; the static rule kept them", unjudged
        )
    log.info(
        "quality filter: kept %d of %d episodes (%s)",
        counts["kept"],
        counts["episodes"],
        ", ".join(f"{rule} {counts[f'dropped/{rule}']}" for rule in RULES),
    )
    if episodes and not kept:
        by_rule = ", ".join(f"{counts[f'dropped/{r}']} {r}" for r in RULES if counts[f"dropped/{r}"])
        raise DataError(f"the quality filter (data.filter) dropped all {len(episodes)} episodes: {by_rule}")
    return result


def _first_failing_rule(episode: Episode, cfg: FilterConfig, success_only: bool) -> tuple[str, str] | None:
    for name, array in (("actions", episode.actions), ("states", episode.states)):
        bad = ~np.isfinite(array)
        if bad.any():
            step, dim = (int(i) for i in np.argwhere(bad)[0])
            return "non_finite", f"{int(bad.sum())} NaN/inf values in {name}, first at step {step}, dim {dim}"
    if success_only:
        if episode.success is None:
            raise DataError(
                f"episode {episode.episode_id!r} ({episode.path}) does not record whether it succeeded "
                "(Isaac: metadata key 'success'; pickle: demo key 'success'), needed by data.success_only=true"
            )
        if not episode.success:
            return "unsuccessful", "recorded as unsuccessful (data.success_only=true)"
    if episode.num_steps < cfg.min_length:
        return "too_short", f"{episode.num_steps} steps < data.filter.min_length={cfg.min_length}"
    if cfg.max_length is not None and episode.num_steps > cfg.max_length:
        return "too_long", f"{episode.num_steps} steps > data.filter.max_length={cfg.max_length}"
    if episode.state_dim and cfg.min_state_variance > 0:
        # float64: a long float32 episode's variance of tiny motions loses digits otherwise.
        variance = float(episode.states.astype(np.float64).var(axis=0).mean())
        if variance < cfg.min_state_variance:
            return (
                "static",
                f"mean state variance {variance:.3g} < data.filter.min_state_variance={cfg.min_state_variance}",
            )
    return None
