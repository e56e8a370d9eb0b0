"""What a training run leaves behind, and loading it back as a ready-to-predict OpenVLA.

<run>/config.yaml              the resolved config
<run>/dataset_statistics.json  the fine-tune's statistics (OpenVLA format)
<run>/base_model/              the base, when it was not a pretrained checkpoint (the tiny model)
<run>/adapter/                 PEFT adapter (PeftModel.from_pretrained(base, <run>/adapter))
<run>/model/                   the whole model, for lora=full
<run>/checkpoints/last.ckpt    Lightning's checkpoint, for ckpt_path= resume
<run>/plots/                   validation plots
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from vla.adapters import record_training_layout
from vla.checkpoint import commit_folder
from vla.configuration import CheckpointError, OpenVLAConfig
from vla.data.statistics import load_statistics
from vla.modeling import OpenVLA
from vla.plots import dof_error_plot, trajectory_plot


def required_action_dim(
    ckpt_path: str | None, pretrained: str | None, dataset_key: str
) -> tuple[int, str] | None:
    """The action dimension the training data must have, and where that requirement comes from.

    Resuming (`ckpt_path`) continues a run whose tokens and statistics have that run's action size; a
    pretrained model that already carries statistics under `dataset_key` (a merged athena fine-tune)
    decodes that many tokens. Anything else (the tiny model, OpenVLA-7B on a new key) takes the data's.
    """
    if ckpt_path:
        run_dir = Path(ckpt_path) if Path(ckpt_path).is_dir() else Path(ckpt_path).parent.parent
        stats_file = run_dir / "dataset_statistics.json"
        if stats_file.is_file():
            stats = load_statistics(stats_file)
            if dataset_key in stats:
                return len(stats[dataset_key]["action"]["q01"]), f"the resumed run's {stats_file}"
    if pretrained and (Path(pretrained) / "config.json").is_file():
        norm_stats = OpenVLAConfig.from_json_file(Path(pretrained) / "config.json").norm_stats or {}
        if dataset_key in norm_stats:
            where = f"norm_stats[{dataset_key!r}] of {Path(pretrained) / 'config.json'}"
            return len(norm_stats[dataset_key]["action"]["q01"]), where
    return None


def save_run_config(run_dir: Path, cfg: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def save_trained(model: Any, run_dir: Path, full: bool) -> Path:
    """Adapters in PEFT's folder form, or the whole model for full fine-tuning (atomically)."""
    if full:
        return model.save_pretrained(run_dir / "model")
    target = run_dir / "adapter"
    tmp = run_dir / ".adapter.tmp"
    # The base is saved on its own (base_model/ or the pretrained id): keep only the adapter weights.
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    commit_folder(tmp, target)
    return target


def load_model(path: str | Path) -> OpenVLA:
    """An OpenVLA-format folder (or hub id), or a training run folder, as a ready-to-predict model."""
    path = Path(path)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return load_run(path)
    return OpenVLA.from_pretrained(path)


def load_run(run_dir: str | Path, merge: bool = True) -> OpenVLA:
    """A training run folder -> OpenVLA with the fine-tune's statistics (adapters merged by default)."""
    run_dir = Path(run_dir)
    if (run_dir / "model" / "config.json").is_file():
        return OpenVLA.from_pretrained(run_dir / "model")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or not (run_dir / "adapter").is_dir():
        raise CheckpointError(f"{run_dir}: not a training run (no config.yaml with adapter/ or model/)")
    cfg = OmegaConf.load(config_file)
    base_dir = run_dir / "base_model" if (run_dir / "base_model").is_dir() else cfg.model.pretrained
    base = OpenVLA.from_pretrained(base_dir)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    model = peft_model.merge_and_unload() if merge else peft_model
    base.config.norm_stats = load_statistics(run_dir / "dataset_statistics.json")
    base.config.extra["constrain_action_decoding"] = bool(cfg.model.constrain_action_decoding)
    # A pretrained base's own config.json does not know how this run trained it.
    record_training_layout(base, int(cfg.data.chunk_size), float(cfg.augment.crop_scale))
    return model.eval()


class RunArtifacts(L.Callback):
    """At each validation: plots (saved under <run>/plots and logged to W&B); at the end of fit: the
    adapters (or full model)."""

    def __init__(self, run_dir: Path, plot_episodes: int, full: bool):
        self.run_dir = run_dir
        self.plot_episodes = plot_episodes
        self.full = full
        self.plot_paths: list[Path] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not module.val_records:
            return
        plots = self.run_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        traj = trajectory_plot(
            module.val_records, self.plot_episodes, plots / f"trajectories_step{step:06d}.png", f"step {step}"
        )
        dof = dof_error_plot(module.val_records, plots / f"dof_error_step{step:06d}.png", f"step {step}")
        self.plot_paths = [traj, dof]
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/trajectories", images=[str(traj)], step=step)
                logger.log_image(key="val/dof_error", images=[str(dof)], step=step)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_trained(module.model, self.run_dir, self.full)


class SimSuccessRate(L.Callback):
    """Every `every_n_val` validations: closed-loop success on held-out simulated episodes, logged as
    `val/success_rate` (and `val/success_rate/<task>`). Only for data=sample (the simulator's tasks)."""

    def __init__(
        self, tasks: list[str], episodes_per_task: int, image_size: int, control_hz: int, every_n_val: int
    ):
        from vla.sim.config import EvalSettings, SimSettings

        self.settings = EvalSettings(
            tasks=tasks,
            episodes_per_task=episodes_per_task,
            gif_episodes=0,
            sim=SimSettings(image_size=image_size, control_hz=control_hz),
        )
        self.every_n_val = every_n_val
        self.count = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.count += 1
        if self.count % self.every_n_val or not trainer.is_global_zero:
            return
        from vla.sim.evaluate import evaluate_policy

        model = module.vla  # the adapters are injected into it: predictions include them

        def policy(images, instructions):
            return model.predict(images, instructions).actions

        was_training = module.training
        module.eval()
        report = evaluate_policy(policy, self.settings)
        module.train(was_training)
        module.log("val/success_rate", report["success_rate"], rank_zero_only=True)
        for task, result in report["per_task"].items():
            module.log(f"val/success_rate/{task}", result["success_rate"], rank_zero_only=True)
