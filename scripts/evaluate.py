"""Closed-loop evaluation of a checkpoint on the simulated athena, with expert and random baselines.

python scripts/evaluate.py checkpoint=outputs/train/<date>/<time> [episodes_per_task=20] [wandb=true]
python scripts/evaluate.py checkpoint=null episodes_per_task=50 sim.image_size=64   # baselines only
Writes eval.json, eval.md and gifs/<policy>/<task>.gif to the run folder (or output_dir).
A training run on data=sample evaluates with the camera, image size and action rate it was trained at,
unless sim.camera / sim.image_size / sim.control_hz are given on the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.config import EvaluateConfig, to_settings  # noqa: E402


def load_policy(checkpoint: str | Path, unnorm_key: str | None):
    """`policy(images, instructions) -> actions [B, D]` in robot units, from an OpenVLA-format folder or
    a training run folder."""
    from vla.training.runs import load_model

    model = load_model(checkpoint)

    def policy(images, instructions):
        return model.predict(images, instructions, unnorm_key=unnorm_key).actions

    return policy


def run(cfg: EvaluateConfig, out_dir: str | Path) -> dict:
    """Evaluate; returns the report written to `<out_dir>/eval.json`."""
    from vla.sim.evaluate import evaluate_with_baselines, log_to_wandb

    policy = None if cfg.checkpoint is None else load_policy(cfg.checkpoint, cfg.unnorm_key)
    report = evaluate_with_baselines(policy, cfg.settings(), out_dir, name="model")
    if cfg.wandb:
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the user chose otherwise
        wandb.init(
            project=cfg.wandb_project, job_type="evaluate", mode=mode, config={"checkpoint": cfg.checkpoint}
        )
        log_to_wandb(report, out_dir)
        wandb.finish()
    return report


def match_training_run(cfg: DictConfig, overridden: set[str]) -> None:
    """A run trained on the simulator's sample data is evaluated with its camera, image size and action
    rate (a policy trained at 5 Hz executes nonsense at 25 Hz), except where the command line says otherwise."""
    if cfg.checkpoint is None or not (Path(str(cfg.checkpoint)) / "config.yaml").is_file():
        return  # an OpenVLA folder, or baselines only
    from vla.training.runs import load_train_config

    data = load_train_config(Path(str(cfg.checkpoint))).data
    if data.format != "sample":
        return
    for key in ("camera", "image_size", "control_hz"):
        trained = getattr(data.sample, key)
        if f"sim.{key}" not in overridden and cfg.sim[key] != trained:
            print(f"sim.{key}={trained} (as the run was trained)")
            cfg.sim[key] = trained


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    overridden = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    match_training_run(cfg, overridden)
    config = to_settings(cfg, EvaluateConfig)
    out_dir = Path(config.output_dir or HydraConfig.get().runtime.output_dir)
    report = run(config, out_dir)
    print((out_dir / "eval.md").read_text(encoding="utf-8"))
    print(json.dumps({name: r["success_rate"] for name, r in report["results"].items()}))


if __name__ == "__main__":
    main()
