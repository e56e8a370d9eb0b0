"""The data doctor: look at a dataset before training on it (`scripts/doctor.py`, `make doctor`).

`diagnose(load_result, settings, ...)` runs every check on the episodes a loader returned (and the
ones it left out with `on_error="skip"`) and returns the findings with the dataset's exact statistics;
`write_report` writes them as Markdown, JSON and plots. Checks and what they mean: `CHECKS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vla.config import ConfigError, FilterConfig
from vla.config.doctor import DoctorSettings
from vla.data.doctor import episode_checks
from vla.data.doctor.baseline import compare_with_base, read_base_statistics
from vla.data.doctor.dimensions import Group, check_group
from vla.data.doctor.findings import RANK, Finding, listed
from vla.data.episodes import DataError, Episode, LoadResult
from vla.data.inspect import dimension_names
from vla.data.quality import filter_episodes
from vla.data.statistics import DatasetStatistics, compute_statistics

# Every check, its usual severity and what it looks for (the report's glossary).
CHECKS = {
    "load_error": ("error", "the loader left the episode out (on_error=skip); the reason is quoted"),
    "non_finite": ("error", "NaN/inf in actions or states"),
    "count_mismatch": ("error", "a camera's frame count differs from the number of actions"),
    "instruction_empty": ("error", "an episode without a non-empty instruction"),
    "dim_mismatch": ("error", "an episode's action or state size differs from the others'"),
    "empty_episode": ("error", "an episode without steps"),
    "quantile_collapse": ("error", "q01 == q99 on a dimension that does vary: normalization clips the rest"),
    "unit_mixup": ("error", "a dimension beyond a full turn (2 pi) in some episodes, within it in most"),
    "timestamp_order": ("error", "timestamps that go back or stand still"),
    "gripper_range": ("error/warning", "a gripper-like dimension outside [-1, 1] (error when masked)"),
    "base_action_dim": ("error/warning/info", "action size differs from the base model's statistics"),
    "outlier": ("warning", "values more than k q01..q99 ranges outside [q01, q99]"),
    "jump": ("warning", "a step change larger than a fraction of the dimension's q01..q99 range"),
    "frozen": ("warning", "a dimension stuck at one value in an episode while it moves in most others"),
    "timestamp_gap": ("warning", "a step much longer than the expected one"),
    "timestamp_rate": ("warning", "the median step disagrees with the recorded fps"),
    "duplicate": ("warning", "episodes with identical actions and states"),
    "duplicate_frames": ("warning", "episodes with the same first and last frames but other actions"),
    "instruction_rare": ("warning", "instructions with few episodes"),
    "instruction_variant": ("warning", "instructions differing only in case, spacing or punctuation"),
    "base_state_dim": ("warning", "state size differs from the base model's statistics"),
    "base_scale": ("warning", "a dimension's range 10x off the base model's"),
    "quality_filter": ("warning", "episodes the training quality filter (data.filter) drops"),
    "constant": ("info", "dimensions with one value in every frame (unused)"),
    "gripper_unmasked": ("info", "a binary-looking action dimension that is normalized"),
}


@dataclass
class Diagnosis:
    """The doctor's findings, worst first, and what they were computed on."""

    findings: list[Finding]
    statistics: DatasetStatistics | None
    """Exact statistics over every frame of the checked episodes (None when none is left)."""
    names: dict[str, list[str]]
    """Dimension names per kind ("action", "state")."""
    loaded: int
    skipped: int
    checked: list[str]
    """Ids of the episodes the statistics and per-dimension checks cover."""
    instruction_counts: Counter = field(default_factory=Counter)
    base: str | None = None
    """The file of the base statistics compared with; None when there were none."""

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def failed(self, fail_on: str) -> bool:
        """Whether a finding is at least as severe as `fail_on` (warning | error)."""
        return any(RANK[f.severity] >= RANK[fail_on] for f in self.findings)


def diagnose(
    result: LoadResult,
    settings: DoctorSettings,
    *,
    mask_dims: Iterable[int] = (),
    dataset_key: str = "",
    base_stats: str | Path | None = None,
    quality: FilterConfig | None = None,
    success_only: bool = False,
) -> Diagnosis:
    """Every check on `result` (a loader's episodes and the ones it skipped). `base_stats`: statistics
    to compare with (`read_base_statistics`); `quality`: the training quality filter to report drops of."""
    findings = episode_checks.skipped_findings(result.skipped)
    episodes = result.episodes
    checked = []
    for episode in episodes:
        finding = episode_checks.non_finite(episode)
        if finding is not None:
            findings.append(finding)
        elif episode.num_steps == 0:
            findings.append(
                Finding("empty_episode", "error", f"{episode.episode_id}: no steps", [episode.episode_id])
            )
        else:
            checked.append(episode)
    checked, mismatched = _common_dims(checked)
    findings += mismatched
    findings += episode_checks.camera_counts(episodes)
    findings += episode_checks.timestamps(episodes, settings)
    findings += episode_checks.duplicates(episodes, settings)
    findings += episode_checks.instructions(episodes, settings)
    diagnosis = Diagnosis(
        findings,
        None,
        {},
        len(episodes),
        len(result.skipped),
        [e.episode_id for e in checked],
        Counter(e.instruction for e in episodes),
    )
    if not checked:
        diagnosis.findings = _ordered(findings)
        return diagnosis
    try:
        stats = compute_statistics(checked, mask_dims=mask_dims)
    except ValueError as err:
        raise ConfigError(f"data.mask_dims={list(mask_dims)}: {err}") from None
    first = checked[0]
    names = {
        "action": dimension_names(first, "action", first.action_dim),
        "state": dimension_names(first, "state", first.state_dim),
    }
    ids = [e.episode_id for e in checked]
    actions = Group.of("action", [e.actions for e in checked], names["action"], ids)
    findings += check_group(
        actions,
        stats["action"],
        settings,
        outlier_k=settings.outlier_k,
        max_jump=settings.max_jump,
        unit_limit=settings.unit_limit,
        mask=stats["action"]["mask"],
    )
    if first.state_dim:
        states = Group.of("state", [e.states for e in checked], names["state"], ids)
        findings += check_group(
            states,
            stats["proprio"],
            settings,
            outlier_k=settings.state_outlier_k,
            max_jump=settings.state_max_jump,
            unit_limit=settings.state_unit_limit,
        )
    if base_stats is not None:
        base, source = read_base_statistics(base_stats)
        findings += compare_with_base(
            base, source, stats, names, dataset_key, settings.base_key, settings.max_listed
        )
        diagnosis.base = str(source)
    if quality is not None:
        findings += _quality_filter(checked, quality, success_only, settings)
    diagnosis.findings, diagnosis.statistics, diagnosis.names = _ordered(findings), stats, names
    return diagnosis


def _common_dims(episodes: list[Episode]) -> tuple[list[Episode], list[Finding]]:
    """The episodes with the most common (action, state) size; an error for each other one."""
    if not episodes:
        return [], []
    sizes = Counter((e.action_dim, e.state_dim) for e in episodes)
    (action_dim, state_dim), n = sizes.most_common(1)[0]
    kept, findings = [], []
    for e in episodes:
        if (e.action_dim, e.state_dim) == (action_dim, state_dim):
            kept.append(e)
        else:
            findings.append(
                Finding(
                    "dim_mismatch",
                    "error",
                    f"{e.episode_id}: {e.action_dim} action and {e.state_dim} state dimensions, while {n} of "
                    f"{len(episodes)} episodes have {action_dim} and {state_dim}; left out of the statistics.",
                    episodes=[e.episode_id],
                )
            )
    return kept, findings


def _quality_filter(
    episodes: list[Episode], quality: FilterConfig, success_only: bool, settings: DoctorSettings
) -> list[Finding]:
    try:
        dropped = filter_episodes(episodes, quality, success_only=success_only).dropped
    except DataError as err:  # every episode dropped, or success_only without a recorded success
        return [Finding("quality_filter", "error", f"the training quality filter refuses the data: {err}")]
    by_rule: dict[str, list] = {}
    for drop in dropped:
        by_rule.setdefault(drop.rule, []).append(drop)
    return [
        Finding(
            "quality_filter",
            "warning",
            f"data.filter drops {len(drops)} episode(s) by rule {rule!r}: "
            f"{listed([f'{d.episode_id} ({d.reason})' for d in drops], settings.max_listed)}.",
            episodes=[d.episode_id for d in drops],
        )
        for rule, drops in by_rule.items()
    ]


def _ordered(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: -RANK[f.severity])


__all__ = ["CHECKS", "Diagnosis", "Finding", "diagnose", "read_base_statistics"]
