"""`init_from=<run>`: start a new training run from a finished run's weights and statistics.

Unlike `ckpt_path=` (which resumes the same run: optimizer, schedule, step count and data position),
`init_from` starts a new run, with a fresh optimizer and schedule, possibly on other data, from the
weights the earlier run saved. Continuous learning (`vla.learn`) fine-tunes each round this way.

The statistics are the earlier run's, not recomputed: the weights were trained to predict actions
normalised with them, so new statistics would move every prediction before the first step. They
travel on in the new run's `dataset_statistics.json` (and so with every later `init_from`). New
actions outside the earlier q01..q99 are clipped to [-1, 1] as the earlier run's own tails were;
`check_coverage` reports how many there are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vla.config import ConfigError, TrainConfig
from vla.data.statistics import load_statistics
from vla.model.configuration import CheckpointError
from vla.model.modeling import OpenVLA
from vla.training.runs import RESUME_LOCKED_KEYS, first_change, load_train_config, load_trained

log = logging.getLogger(__name__)


def check_init_from(init_from: str, cfg: TrainConfig) -> tuple[Path, TrainConfig]:
    """The run folder `init_from` names and its training config, checked before anything is written:
    a finished lora=full run (`model/` and `dataset_statistics.json`), trained with the same
    model-defining keys and statistics key as `cfg` (the error names the key and both values)."""
    run_dir = Path(init_from).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"init_from={init_from}: not a training run folder (no config.yaml)")
    trained = load_train_config(run_dir)
    if trained.lora.kind != "full" or not (run_dir / "model" / "config.json").is_file():
        raise ConfigError(
            f"init_from={init_from}: only finished lora=full runs (with model/) can be started from; "
            "for a LoRA run continue it with ckpt_path=<run>"
        )
    if cfg.lora.kind != "full":
        raise ConfigError(
            f"init_from needs lora=full (the run it starts from trained every weight), got {cfg.lora.kind}"
        )
    if not (run_dir / "dataset_statistics.json").is_file():
        raise CheckpointError(f"init_from={init_from}: {run_dir / 'dataset_statistics.json'} is missing")
    changed = first_change(trained, cfg, RESUME_LOCKED_KEYS)
    if changed:
        key, was, now = changed
        raise ConfigError(
            f"{key}={now!r}: the run started from ({run_dir}) was trained with {key}={was!r}; a run "
            "started from its weights must build the same model: leave it out"
        )
    return run_dir, trained


def init_statistics(run_dir: Path, dataset_key: str) -> dict[str, Any]:
    """{dataset_key: statistics} of the run started from (frozen: see the module docstring)."""
    stats = load_statistics(run_dir / "dataset_statistics.json")
    if dataset_key not in stats:
        raise ConfigError(
            f"data.dataset_key={dataset_key}: {run_dir / 'dataset_statistics.json'} has only {sorted(stats)}"
        )
    return {dataset_key: stats[dataset_key]}


def check_coverage(stats: dict[str, Any], episodes: list, dataset_key: str) -> float:
    """The share of the episodes' action values outside the frozen q01..q99 (clipped in training);
    logged, and an action-size mismatch raises naming the key."""
    action = stats[dataset_key]["action"]
    lo, hi = np.asarray(action["q01"]), np.asarray(action["q99"])
    values = np.concatenate([np.asarray(e.actions, dtype=np.float64) for e in episodes])
    if values.shape[1] != lo.shape[0]:
        raise ConfigError(
            f"the data's actions have {values.shape[1]} values but the statistics of the run started from "
            f"have {lo.shape[0]} under data.dataset_key={dataset_key}"
        )
    outside = float(np.mean((values < lo - 1e-6) | (values > hi + 1e-6)))
    log.info("init_from: %.2f%% of the action values lie outside the frozen q01..q99", 100 * outside)
    return outside


def load_init_model(run_dir: Path, trained: TrainConfig) -> OpenVLA:
    """The run's model (weights, statistics, layout) in training mode, ready for `apply_adapter`."""
    model = load_trained(run_dir, trained, merge=True)
    return model.train()
