"""Every experiment file (conf/experiment/*.yaml) trains a few steps through the real entry point
(`python train.py experiment=<name> debug=fdr`) and its run keeps the experiment's own settings.

The default paths.cache_dir (.cache/athena_vla) is shared with the other tests and with the user's own
runs on purpose: the few sample episodes debug=fdr asks for are generated once and reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DEBUG = "fdr"


def leaves(node, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of every leaf in a YAML mapping (lists are leaves)."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def set_keys(path: Path) -> dict[str, object]:
    """The keys a `# @package _global_` file sets (its defaults list aside), resolved as OmegaConf reads
    YAML (5e-4 is a float)."""
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.pop("defaults", None)
    return leaves(cfg)


def group_overrides(path: Path) -> dict[str, str]:
    """`override /group: choice` entries of a file's defaults list -> {group: choice}."""
    out = {}
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if isinstance(entry, dict):
            (key, choice), *_ = entry.items()
            if key.startswith("override /"):
                out[key.removeprefix("override /")] = choice
    return out


def test_experiments_are_found():
    assert EXPERIMENTS, "no conf/experiment/*.yaml"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    cmd = [
        sys.executable,
        "train.py",
        f"experiment={name}",
        f"debug={DEBUG}",
        f"paths.output_dir={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]

    runs = list((tmp_path / "train").glob("*/*"))
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "dataset_statistics.json").is_file()
    assert (run / "adapter").is_dir() or (run / "model").is_dir(), sorted(p.name for p in run.iterdir())

    # What the run must have saved, layered as Hydra composes train.yaml's defaults: the group files the
    # experiment and then debug=fdr choose (`override /lora: full`), the experiment's own keys, then
    # debug=fdr's (the steps and the episodes it shrinks).
    experiment_file = CONF / "experiment" / f"{name}.yaml"
    debug_file = CONF / "debug" / f"{DEBUG}.yaml"
    experiment = set_keys(experiment_file)
    expected = {}
    for group, choice in {**group_overrides(experiment_file), **group_overrides(debug_file)}.items():
        expected.update({f"{group}.{k}": v for k, v in set_keys(CONF / group / f"{choice}.yaml").items()})
    expected.update(experiment)
    expected.update(set_keys(debug_file))
    own = [
        k for k in experiment if k.startswith(("model.", "data.", "optim.")) and expected[k] == experiment[k]
    ]
    assert own, f"{experiment_file.name} sets no model/data/optim key that debug={DEBUG} keeps"

    saved = OmegaConf.load(run / "config.yaml")
    wrong = {
        key: (OmegaConf.select(saved, key, default="<absent>"), value)
        for key, value in expected.items()
        if OmegaConf.select(saved, key, default="<absent>") != value
    }
    assert not wrong, f"saved config.yaml differs (saved, expected): {wrong}"
