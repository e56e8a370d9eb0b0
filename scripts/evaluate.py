"""Closed-loop evaluation of a policy on the simulated athena, with expert and random baselines.

python scripts/evaluate.py                                       # the latest training run
python scripts/evaluate.py checkpoint=outputs/train/<date>/<time> episodes_per_task=100 tasks=[reach_ball]
python scripts/evaluate.py checkpoint=<export folder> backend=onnx_int8
python scripts/evaluate.py checkpoint=null episodes_per_task=50     # baselines only
python scripts/evaluate.py sim.disturbance.start_std=0.5             # from displaced start poses (vla.config.sim)
Writes eval.json, eval.md and gifs/<policy>/<task>.gif to the run folder (or output_dir). A training
run on simulator data is evaluated in the scene it was trained in (its data.sample camera, image size
and action rate); any other checkpoint in the composed data.sample's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import EvaluateConfig, SampleDataConfig, register_configs, to_object  # noqa: E402

register_configs()


def trained_scene(checkpoint: str | None, default: SampleDataConfig) -> SampleDataConfig:
    """The data.sample a run (or the run an export came from) was trained on, since a policy trained
    at 5 Hz executes nonsense at 25 Hz; `default` for other checkpoints."""
    from vla.inference.policy import training_scene

    scene = training_scene(checkpoint) if checkpoint is not None else None
    if scene is None:
        return default
    sample = to_object(scene, SampleDataConfig)
    print(
        f"scene: camera {sample.camera}, {sample.image_size} px, {sample.control_hz} Hz (as the policy was trained)"
    )
    return sample


def run(cfg: EvaluateConfig, out_dir: str | Path) -> dict:
    """Evaluate; returns the report written to `<out_dir>/eval.json`."""
    from vla.inference import load_policy
    from vla.outputs import resolve_latest
    from vla.sim.evaluate import evaluate_with_baselines, log_to_wandb

    checkpoint = resolve_latest(cfg.checkpoint, "checkpoint", cfg.paths.output_dir, "train")
    policy = None
    if checkpoint is not None:
        policy = load_policy(checkpoint, cfg.backend, unnorm_key=cfg.unnorm_key)
    settings = cfg.settings(trained_scene(checkpoint, cfg.data.sample))
    settings = dataclasses.replace(settings, disturbance=cfg.sim.disturbance)  # deployment conditions
    report = evaluate_with_baselines(policy, settings, out_dir, name="model")
    if cfg.wandb:
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the user chose otherwise
        wandb.init(
            project=cfg.wandb_project, job_type="evaluate", mode=mode, config={"checkpoint": checkpoint}
        )
        log_to_wandb(report, out_dir)
        wandb.finish()
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco
    with user_errors():
        config = to_object(cfg, EvaluateConfig)
        out_dir = Path(config.output_dir or HydraConfig.get().runtime.output_dir)
        report = run(config, out_dir)
    print((out_dir / "eval.md").read_text(encoding="utf-8"))
    print(json.dumps({name: r["success_rate"] for name, r in report["results"].items()}))


if __name__ == "__main__":
    main()
