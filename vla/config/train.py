"""Schema of the training run: optimizer, Lightning trainer, logger, callbacks, paths, and the whole
`conf/train.yaml` (TrainConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.data import AugmentConfig, DataConfig
from vla.config.model import LoraConfig, ModelConfig, QuantizationConfig
from vla.config.sim import SimConfig

ACTION_LOSSES = ("l1", "mse", "huber")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    # Training loss of a continuous head (model.action_head=l1) on normalized actions: l1 (OpenVLA-OFT),
    # mse, or huber (quadratic below huber_delta, L1 above). val/loss is the mean L1 whatever this is.
    action_loss: str = "l1"
    huber_delta: float = 0.1
    # Exponential moving average of the weights (Polyak averaging, as diffusion-policy and LeRobot train):
    # validation, checkpoints and the saved model use the average. 0: off; e.g. 0.999 (a horizon of about
    # 1000 steps). Early in training the decay is min(ema_decay, (1 + n) / (10 + n)) after n updates, so
    # the random initial weights are forgotten. Needs lora=full (the average copies every weight).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_choice("optim.action_loss", self.action_loss, ACTION_LOSSES)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay={self.ema_decay} must be in [0, 1) (0: off; e.g. 0.999)")
        if not self.huber_delta > 0:
            raise ConfigError(f"optim.huber_delta={self.huber_delta} must be > 0")
        # `not x > 0` also refuses NaN; inf is caught by the upper bound.
        if not 0 < self.lr < 1:
            raise ConfigError(f"optim.lr={self.lr} must be in (0, 1) (e.g. 3e-4)")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(
                f"optim.betas={list(self.betas)} must be two values in [0, 1), e.g. [0.9, 0.999]"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclass
class TrainerConfig:
    """Arguments of `lightning.Trainer` that this project sets."""

    name: str = "cpu"
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | ddp_spawn
    num_nodes: int = 1
    precision: str = "32-true"  # bf16-mixed on GPU
    max_steps: int = 1000
    max_epochs: int = -1
    val_check_interval: int = 200  # steps between validations
    limit_val_batches: float = 1.0
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0  # OpenVLA has none (openvla #333)
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        # Lightning takes max_steps=-1 (and 0) too: the first trains until max_epochs (forever by
        # default), the second saves an untrained adapter; both are refused here, before anything is written.
        for key in ("max_steps", "val_check_interval", "accumulate_grad_batches", "devices", "num_nodes"):
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"trainer.{key}={value} must be >= 1")
        if self.log_every_n_steps < 1:
            raise ConfigError(f"trainer.log_every_n_steps={self.log_every_n_steps} must be >= 1")
        if self.max_epochs != -1 and self.max_epochs < 1:
            raise ConfigError(f"trainer.max_epochs={self.max_epochs} must be >= 1 (or -1: max_steps decides)")
        if not 0 < self.limit_val_batches <= 1 and not (
            self.limit_val_batches > 1 and float(self.limit_val_batches).is_integer()
        ):
            raise ConfigError(
                f"trainer.limit_val_batches={self.limit_val_batches} must be a fraction in (0, 1] or a "
                "whole number of batches"
            )
        if self.gradient_clip_val is not None and not self.gradient_clip_val >= 0:
            raise ConfigError(f"trainer.gradient_clip_val={self.gradient_clip_val} must be >= 0 (or null)")
        if self.num_sanity_val_steps < -1:
            raise ConfigError(f"trainer.num_sanity_val_steps={self.num_sanity_val_steps} must be >= -1")


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | tensorboard | csv | none
    project: str = "athena-vla"
    mode: str | None = None  # W&B mode; None: WANDB_MODE if set, else offline
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("logger.name", self.name, ("wandb", "tensorboard", "csv", "none"))


@dataclass
class CallbacksConfig:
    plot_episodes: int = 3  # held-out episodes in the trajectory plot at each validation
    save_top_k: int = 1
    sim_eval_every_n_val: int = 0  # closed-loop success rate every N validations (0: off)
    sim_eval_episodes: int = 2  # per task

    def __post_init__(self) -> None:
        if self.save_top_k < -1:
            raise ConfigError(f"callbacks.save_top_k={self.save_top_k} must be >= -1 (-1: every checkpoint)")
        for key in ("plot_episodes", "sim_eval_every_n_val", "sim_eval_episodes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"callbacks.{key}={getattr(self, key)} must be >= 0")


@dataclass
class PathsConfig:
    """Where every stage writes (`<output_dir>/<stage>/<date>/<time>[_<name>]/`) and where derived data
    (generated sample episodes, decoded frames, simplified meshes) is cached."""

    output_dir: str = "outputs"
    cache_dir: str = ".cache/athena_vla"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    sim: SimConfig = field(default_factory=SimConfig)  # data=sample's generation, closed-loop checks
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = MISSING  # set by Hydra: outputs/train/<date>/<time>[_<run_name>]
    seed: int = 0
    ckpt_path: str | None = None  # resume from a Lightning checkpoint (or a run folder)
    # Start a new run from a finished lora=full run's weights and statistics (fresh optimizer and
    # schedule; vla.training.warm_start); continuous learning fine-tunes each round this way.
    init_from: str | None = None
    run_name: str | None = None  # W&B run name and run-folder suffix; default: the overrides (W&B only)
    optimized_metric: str | None = "val/loss"  # what train.py returns to a sweeper

    def __post_init__(self) -> None:
        if self.ckpt_path and self.init_from:
            raise ConfigError(
                "ckpt_path resumes a run, init_from starts a new one from a run's weights: pass one of them"
            )
        tokens_read = self.model.action_head == "tokens" or self.model.layout.grounding_tokens_first
        if not tokens_read and self.data.token_noise > 0:
            raise ConfigError(
                f"data.token_noise={self.data.token_noise} perturbs input tokens, which "
                f"model.action_head={self.model.action_head} does not read; set it to 0 (or write the "
                "grounding as tokens first: model.layout.grounding_tokens_first=true)"
            )
        if self.trainer.val_check_interval > self.trainer.max_steps:
            raise ConfigError(
                f"trainer.val_check_interval={self.trainer.val_check_interval} is more than "
                f"trainer.max_steps={self.trainer.max_steps}: the run would never validate or save a checkpoint"
            )
        if self.optim.ema_decay and self.lora.kind != "full":
            raise ConfigError(
                f"optim.ema_decay={self.optim.ema_decay} averages every weight of the model, a second copy of "
                f"the base beside lora={self.lora.name}'s adapters; use it with lora=full (or set it to 0)"
            )
        if self.lora.kind == "full" and self.quantization.method is not None:
            raise ConfigError(
                "lora=full cannot train a quantized base; use a LoRA choice with quantization=nf4"
            )
