"""Callbacks of a training run: validation plots and the saved weights, and closed-loop success in the
simulator during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from vla.model.modeling import OpenVLA
from vla.model.policy import Policy, policy_info
from vla.training.plots import dof_error_plot, trajectory_plot
from vla.training.runs import save_trained


def training_policy(model: OpenVLA) -> Policy:
    """The model being trained, as a `Policy` (torch backend, its own statistics)."""
    return Policy(model, policy_info(model, "training", "torch", "run"))


class EMAWeights(WeightAveraging):
    """Lightning's weight averaging with an exponential moving average whose decay warms up:
    min(decay, (1 + n) / (10 + n)) after n updates, so the average forgets the random initial weights
    within a few hundred steps instead of keeping decay^steps of them (`optim.ema_decay`).

    Validation (the plots and closed-loop checks with it), checkpoints' `state_dict` and the weights
    saved at the end are the average; `current_model_state` in a checkpoint keeps the trained weights for
    resuming. Updated after every optimizer step (`WeightAveraging.should_update`'s default)."""

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.decay = decay
        super().__init__(multi_avg_fn=self._update)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """A checkpoint's `state_dict` (the average) holds the trainable tensors only
        (`VLAModule.on_save_checkpoint`); the frozen ones, which the average copies unchanged, come from
        the rebuilt model, so Lightning's strict load of the average finds every key."""
        if self._average_model is not None and "averaging_state" in checkpoint:
            rebuilt = {
                k[len("module.") :]: v
                for k, v in self._average_model.state_dict().items()
                if k.startswith("module.")
            }
            checkpoint["state_dict"] = {**rebuilt, **checkpoint["state_dict"]}
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    @torch.no_grad()
    def _update(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor | int
    ) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (one group per dtype): the latest value
            torch._foreach_copy_(averaged, current)
            return
        n = int(n)
        decay = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - decay)


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
    `val/success_rate` (and `val/success_rate/<task>`; for reach_ball also `val/named_ball_rate/reach_ball`,
    the share of episodes whose hand ends nearest the named ball). Only for data=sample (the simulator's
    tasks)."""

    def __init__(
        self, tasks: list[str], episodes_per_task: int, sim: Any, every_n_val: int, disturbance: Any = None
    ):
        """`sim`: the vla.config.sim.SimSettings the training episodes were recorded with; `disturbance`:
        the `sim.disturbance` the check's episodes meet (None: nominal), as `scripts/evaluate.py` does."""
        from vla.config.sim import DisturbanceSettings, EvalSettings

        self.settings = EvalSettings(
            tasks=tasks,
            episodes_per_task=episodes_per_task,
            gif_episodes=0,
            sim=sim,
            disturbance=disturbance or DisturbanceSettings(),
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

        # The adapters are injected into the model: its predictions include them.
        policy = training_policy(module.vla)
        was_training = module.training
        module.eval()
        report = evaluate_policy(policy, self.settings)
        module.train(was_training)
        module.log("val/success_rate", report["success_rate"], rank_zero_only=True)
        for task, result in report["per_task"].items():
            module.log(f"val/success_rate/{task}", result["success_rate"], rank_zero_only=True)
            if result["named_ball_rate"] is not None:  # grounding: went for the named ball at all
                module.log(f"val/named_ball_rate/{task}", result["named_ball_rate"], rank_zero_only=True)
