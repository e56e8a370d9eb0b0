"""Fine-tune an OpenVLA policy.

python train.py                                  # tiny model, simulated sample data, CPU
python train.py lora=efficient quantization=nf4  # QLoRA
python train.py -m lora=humanoid_default,efficient,high_performance
python train.py -m hparams_search=optuna
python train.py model=openvla_7b lora=efficient quantization=nf4 trainer=gpu data=isaac data.root=DIR
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from vla.cli import user_errors
from vla.config import TrainConfig, register_configs, to_object

log = logging.getLogger("train")
register_configs()


def make_loggers(cfg: TrainConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    if cfg.logger.name == "none":
        return []
    if cfg.logger.name == "csv":
        return [CSVLogger(save_dir=run_dir, name="csv", version="")]
    if cfg.logger.name == "tensorboard":  # local curves without an account: tensorboard --logdir <run>
        return [TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False)]
    # Offline unless the user chose a mode: nothing here needs a network.
    mode = cfg.logger.mode or os.environ.get("WANDB_MODE") or "offline"
    return [
        WandbLogger(
            project=cfg.logger.project,
            name=cfg.run_name or run_dir.name,
            save_dir=str(run_dir),
            mode=mode,
            tags=list(cfg.logger.tags),
            config=asdict(cfg),
        )
    ]


def run(cfg: TrainConfig) -> dict[str, float]:
    """Train; returns the final validation metrics."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from vla.data.datamodule import VLADataModule
    from vla.data.statistics import save_statistics
    from vla.model.quantize import quantize_language_model
    from vla.sim.episodes import resolve_sample_data
    from vla.training.adapters import apply_adapter
    from vla.training.build import build_base_model, prompt_budget
    from vla.training.callbacks import EMAWeights, RunArtifacts, SimSuccessRate
    from vla.training.module import VLAModule
    from vla.training.runs import (
        RunCheckpointIO,
        check_pretrained_key,
        check_resume,
        claim_run_dir,
        required_action_dim,
        save_run_config,
    )
    from vla.training.warm_start import check_coverage, check_init_from, init_statistics, load_init_model

    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    # `ckpt_path=` (a .ckpt or a run folder) checked before anything is written; then a folder of our own.
    resume = check_resume(cfg.ckpt_path, cfg) if cfg.ckpt_path else None
    init = check_init_from(cfg.init_from, cfg) if cfg.init_from else None  # (run folder, its config)
    run_dir = claim_run_dir(Path(cfg.run_dir))
    cfg.run_dir = str(run_dir)
    save_run_config(run_dir, cfg)

    data = resolve_sample_data(cfg.data, cfg.sim, cfg.paths.cache_dir)  # data=sample: generated once
    datamodule = VLADataModule.for_run(data, cfg)
    stats = datamodule.prepare(
        required_action_dim(cfg.ckpt_path or cfg.init_from, cfg.data.dataset_key), prompt_budget(cfg.model)
    )
    if init:  # the weights predict in the started-from run's normalisation: keep its statistics
        stats = datamodule.statistics = init_statistics(init[0], cfg.data.dataset_key)
        check_coverage(stats, datamodule.train_episodes, cfg.data.dataset_key)
    check_pretrained_key(cfg.model.pretrained, cfg.data.dataset_key, stats)
    save_statistics(run_dir / "dataset_statistics.json", stats)
    # The tiny base is a fresh random model: keep it (before quantization) so the run is self-contained.
    quant = cfg.quantization if cfg.model.pretrained else type(cfg.quantization)()
    if init:
        base = load_init_model(*init)
    else:
        base = build_base_model(cfg.model, quant, stats, cfg.augment.crop_scale)
    if not cfg.model.pretrained:
        base.save_pretrained(run_dir / "base_model")
        base.name_or_path = str((run_dir / "base_model").resolve())  # the adapter's base_model_name_or_path
        if cfg.quantization.method:
            quantize_language_model(
                base, cfg.quantization.method, compute_dtype=next(base.parameters()).dtype
            )
    datamodule.attach(base)
    model = apply_adapter(base, cfg.lora, cfg.model.gradient_checkpointing)
    model.train()  # from_pretrained gives eval mode; Lightning keeps it, which would turn off LoRA dropout
    module = VLAModule(
        model,
        cfg.optim,
        stats[cfg.data.dataset_key]["action"],
        cfg.trainer.max_steps,
        grounding_weight=cfg.data.grounding_weight,
        grounding_weight_steps=cfg.data.grounding_weight_steps,
        token_noise=cfg.data.token_noise,
        token_noise_bins=cfg.data.token_noise_bins,
    )

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor="val/loss",
        save_top_k=cfg.callbacks.save_top_k,
        save_last=True,
    )
    loggers = make_loggers(cfg, run_dir)
    # What the loaders skipped and the quality filter dropped, beside the run's curves.
    data_counts = {f"data/{key}": value for key, value in datamodule.filter_report.items()}
    data_counts["data/skipped"] = len(datamodule.report.skipped)
    for logger in loggers:
        logger.log_metrics(data_counts, step=0)
    callbacks = [checkpoint, RunArtifacts(run_dir, cfg.callbacks.plot_episodes, cfg.lora.kind == "full")]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.callbacks.sim_eval_every_n_val and cfg.data.format == "sample":
        sample = cfg.data.sample
        callbacks.append(
            SimSuccessRate(
                sample.tasks,
                cfg.callbacks.sim_eval_episodes,
                sample.sim_settings(cfg.sim),
                cfg.callbacks.sim_eval_every_n_val,
                cfg.sim.disturbance,  # the check meets it; the demonstrations are recorded without it
            )
        )
    if cfg.optim.ema_decay:  # last: the hooks before it see the average at validation
        callbacks.append(EMAWeights(cfg.optim.ema_decay))
    # TrainerConfig's fields are Lightning Trainer arguments, one for one (but the choice's name).
    trainer_args = {k: v for k, v in asdict(cfg.trainer).items() if k != "name"}
    trainer = L.Trainer(
        **trainer_args,
        check_val_every_n_epoch=None,
        default_root_dir=run_dir,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[RunCheckpointIO()],  # a failed checkpoint write names the file and what to do
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["wall_time_s"] = time.perf_counter() - start
    if trainer.is_global_zero:
        where = run_dir / ("model" if cfg.lora.kind == "full" else "adapter")
        log.info("finished in %.0f s; val/loss %s", metrics["wall_time_s"], metrics.get("val/loss"))
        print(f"\nrun folder:  {run_dir}")
        print(f"weights:     {where}")
        print(f"statistics:  {run_dir / 'dataset_statistics.json'}")
        print(f"plots:       {run_dir / 'plots'}")
        for logger in loggers:
            if cfg.logger.name == "wandb":
                print(f"W&B run:     {Path(logger.experiment.dir).parent}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (sample data, closed-loop checks)
    with user_errors():
        typed: TrainConfig = to_object(cfg, TrainConfig)
    if typed.run_name is None:
        # W&B shows the overrides (lora=efficient,optim.lr=...); a plain `python train.py` its folder.
        run_dir = Path(typed.run_dir)
        typed.run_name = HydraConfig.get().job.override_dirname or f"{run_dir.parent.name}_{run_dir.name}"
    with user_errors():
        metrics = run(typed)
    return metrics.get(typed.optimized_metric) if typed.optimized_metric else None


if __name__ == "__main__":
    main()
