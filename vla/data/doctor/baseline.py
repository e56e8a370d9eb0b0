"""The data against a base model's statistics: the action size a fine-tune must keep, and ranges that
differ by an order of magnitude (a unit change)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vla.config import ConfigError
from vla.data.doctor.findings import Finding, listed
from vla.data.episodes import DataError
from vla.data.statistics import DatasetStatistics, load_statistics, validate_statistics

# Ranges (q99 - q01) more than this many times apart in a dimension are flagged.
SCALE_RATIO = 10.0


def read_base_statistics(path: str | Path) -> tuple[dict[str, Any], Path]:
    """`{key: statistics}` from a dataset_statistics.json, or from a folder holding one (a run, an
    export, an OpenVLA model), else from the folder's config.json `norm_stats`; and the file read."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return load_statistics(path), path
    if (path / "dataset_statistics.json").is_file():
        return load_statistics(path / "dataset_statistics.json"), path / "dataset_statistics.json"
    config = path / "config.json"
    if not config.is_file():
        raise DataError(f"{path}: holds neither dataset_statistics.json nor config.json (doctor.base_stats)")
    try:
        norm_stats = json.loads(config.read_text(encoding="utf-8")).get("norm_stats")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{config}: not a readable JSON config: {exc}") from exc
    if not norm_stats:
        raise DataError(f"{config}: has no norm_stats and there is no dataset_statistics.json beside it")
    validate_statistics(norm_stats, source=f"{config} (norm_stats)")
    return norm_stats, config


def compare_with_base(
    base: dict[str, Any],
    source: Path,
    stats: DatasetStatistics,
    names: dict[str, list[str]],
    dataset_key: str,
    base_key: str | None,
    max_listed: int,
) -> list[Finding]:
    """Findings on the data's action (and state) size and ranges against `base[key]`.

    The key is `base_key` when given, else `dataset_key` when the base has it: a fine-tune under that
    key must keep its action size (an error otherwise). Without either, a base with one key is compared
    as a warning (fine-tuning under a new key is possible); with several, their sizes are listed."""
    ours = len(stats["action"]["q01"])
    if base_key is not None and base_key not in base:
        raise ConfigError(f"doctor.base_key={base_key!r} is not in {source}; its keys: {sorted(base)}")
    key = base_key or (dataset_key if dataset_key in base else None)
    severity = "error"
    if key is None and len(base) == 1:
        key, severity = next(iter(base)), "warning"
    if key is None:
        sizes = defaultdict(list)
        for name, entry in base.items():
            sizes[len(entry["action"]["q01"])].append(name)
        text = "; ".join(
            f"{size}: {listed(sorted(names), max_listed)}" for size, names in sorted(sizes.items())
        )
        return [
            Finding(
                "base_action_dim",
                "info" if ours in sizes else "warning",
                f"{source} has no statistics under data.dataset_key={dataset_key!r}; action sizes of its keys: "
                f"{text}. This data's actions have {ours} dimensions; fine-tuning saves statistics under "
                f"{dataset_key!r} (pass doctor.base_key=KEY to compare with one of them).",
            )
        ]
    theirs = base[key]
    findings = []
    if len(theirs["action"]["q01"]) != ours:
        findings.append(
            Finding(
                "base_action_dim",
                severity,
                f"the actions have {ours} dimensions, the base statistics {source} [{key!r}] "
                f"{len(theirs['action']['q01'])}: "
                + (
                    f"a fine-tune under data.dataset_key={key!r} stops before training; pick a new key "
                    f"(data.dataset_key={key}_{ours}d) or convert the actions."
                    if severity == "error"
                    else "the model was trained on another action layout (fine-tuning under a new key "
                    "learns the new one from scratch)."
                ),
            )
        )
        return findings
    ranges = {
        "action": (
            np.subtract(stats["action"]["q99"], stats["action"]["q01"]),
            np.subtract(theirs["action"]["q99"], theirs["action"]["q01"]),
        ),
    }
    their_states = len(theirs["proprio"]["q01"])
    if their_states and their_states == len(stats["proprio"]["q01"]):
        ranges["state"] = (
            np.subtract(stats["proprio"]["q99"], stats["proprio"]["q01"]),
            np.subtract(theirs["proprio"]["q99"], theirs["proprio"]["q01"]),
        )
    elif their_states:
        findings.append(
            Finding(
                "base_state_dim",
                "warning",
                f"the states have {len(stats['proprio']['q01'])} dimensions, the base statistics {source} "
                f"[{key!r}] {their_states}: a model reading the state (model.proprio) cannot take them.",
            )
        )
    for kind, (mine, base_range) in ranges.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mine / base_range
        far = np.flatnonzero(
            (mine > 0) & (base_range > 0) & ((ratio > SCALE_RATIO) | (ratio < 1 / SCALE_RATIO))
        )
        if len(far):
            text = [f"{names[kind][d]}: {mine[d]:.4g} vs {base_range[d]:.4g}" for d in far]
            findings.append(
                Finding(
                    "base_scale",
                    "warning",
                    f"{len(far)} {kind} dimension(s) span a q01..q99 range over {SCALE_RATIO:g}x larger or "
                    f"smaller than in {source} [{key!r}] (this data vs the base): {listed(text, max_listed)}; "
                    "another unit (degrees, millimetres) or another robot?",
                    dims=[f"{kind}/{names[kind][d]}" for d in far],
                )
            )
    return findings
