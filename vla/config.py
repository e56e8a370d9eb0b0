"""The typed schema behind every YAML file in `conf/`.

Each group's YAML files are validated against one dataclass here (registered in Hydra's
ConfigStore as `<group>/schema` and listed first in each file's defaults), so an unknown or mistyped
key fails at start-up with its name, and a value of the wrong type fails with the expected type.
Entry points convert the composed config to these objects once (`to_object`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vla.tiny import TinyArchitecture

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the valid choices."""


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")


@dataclass
class ModelConfig:
    """Which OpenVLA to fine-tune."""

    name: str = "openvla_tiny"
    pretrained: str | None = None  # OpenVLA-format folder or hub id; None: a new tiny model
    architecture: TinyArchitecture = field(default_factory=TinyArchitecture)  # only when pretrained=None
    dtype: str = "float32"  # weights of the frozen base: float32 | bfloat16 | float16
    constrain_action_decoding: bool = True  # saved models decode only the 256 action tokens
    gradient_checkpointing: bool = False  # recompute the LLM's activations in backward (saves memory)
    init_seed: int = 0  # seed of the random tiny model

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class LoraConfig:
    """The adapter: LoRA (DoRA with use_dora), or `full` fine-tuning of every weight."""

    name: str = "humanoid_default"
    kind: str = "lora"  # lora | full
    r: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: [*LLAMA_TARGETS, "lm_head"])
    use_dora: bool = False

    def __post_init__(self) -> None:
        _choice("lora.kind", self.kind, ("lora", "full"))
        if self.kind == "lora" and (self.r < 1 or not self.target_modules):
            raise ConfigError("lora.r must be >= 1 and lora.target_modules non-empty for kind=lora")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")


@dataclass
class QuantizationConfig:
    """bitsandbytes quantization of the frozen language model (QLoRA = LoRA + nf4)."""

    name: str = "none"
    method: str | None = None  # None | nf4 | int8

    def __post_init__(self) -> None:
        _choice("quantization.method", self.method, (None, "nf4", "int8"))


@dataclass
class SampleDataConfig:
    """The simulated athena dataset that `data=sample` generates on first use (see vla/sim)."""

    tasks: list[str] = field(default_factory=lambda: ["all"])
    episodes_per_task: int = 8
    image_size: int = 112
    seed: int = 0


@dataclass
class DataConfig:
    """Where the demonstrations come from and how they are split and batched."""

    name: str = "sample"
    format: str = "sample"  # sample | isaac | pickle
    root: str | None = None  # isaac: folder of episodes; pickle: a file or a folder of them
    dataset_key: str = "athena_sim"  # key of the statistics in dataset_statistics.json
    success_only: bool = False
    on_error: str = "raise"  # raise | skip (bad episodes are reported and left out)
    val_fraction: float = 0.15
    split_seed: int = 0
    mask_dims: list[int] = field(default_factory=list)  # gripper-like dims left unnormalized
    join_gripper: bool = True  # pickle: action = action ++ gripper
    next_action: bool = True  # pickle: pair frame i with frame i+1's action
    batch_size: int = 8
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    chunk_size: int = 1  # K future actions per sample (K*D action tokens); 1 is OpenVLA
    cache_images: bool = True  # decode each frame once into a memory-mapped uint8 cache (paths.cache_dir)
    sample: SampleDataConfig = field(default_factory=SampleDataConfig)

    def __post_init__(self) -> None:
        _choice("data.format", self.format, ("sample", "isaac", "pickle"))
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        if self.chunk_size < 1:
            raise ConfigError(f"data.chunk_size={self.chunk_size} must be >= 1 (1: one action per step)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.format != "sample" and not self.root:
            raise ConfigError(
                f"data.root is required for data.format={self.format} (data=isaac data.root=DIR)"
            )


@dataclass
class AugmentConfig:
    """Image augmentation of the training split (albumentations), applied in this order: random
    resized crop, brightness, contrast, saturation, hue, Gaussian blur, Gaussian noise. An operation
    whose probability is 0 or whose range is the identity is left out. Validation, evaluation and
    prediction see un-augmented frames, centre-cropped to `crop_scale` when it is below 1."""

    name: str = "none"
    crop_scale: float = 1.0  # area of the random square-ish crop, resized back (OpenVLA: 0.9); 1: none
    crop_ratio: float = 1.0  # aspect ratio (width / height) of that crop (OpenVLA: 1)
    brightness: float = 0.0  # additive shift, uniform in [-b, b] of the full range (OpenVLA: 0.2)
    brightness_p: float = 1.0
    contrast: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor around the mean grey
    contrast_p: float = 1.0
    saturation: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor (1: unchanged)
    saturation_p: float = 1.0
    hue: float = 0.0  # shift, uniform in [-h, h] of the hue circle (OpenVLA: 0.05)
    hue_p: float = 1.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.5])  # Gaussian blur sigma range
    blur_p: float = 0.0
    noise_std: list[float] = field(default_factory=lambda: [0.01, 0.05])  # Gaussian noise std range
    noise_p: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"augment.crop_scale={self.crop_scale} must be in (0, 1] (1: no crop)")
        if self.crop_ratio <= 0.0:
            raise ConfigError(f"augment.crop_ratio={self.crop_ratio} must be > 0")
        if not 0.0 <= self.brightness <= 1.0 or not 0.0 <= self.hue <= 0.5:
            raise ConfigError(
                f"augment.brightness={self.brightness} must be in [0, 1] and augment.hue={self.hue} in [0, 0.5]"
            )
        for key in ("brightness_p", "contrast_p", "saturation_p", "hue_p", "blur_p", "noise_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"augment.{key}={getattr(self, key)} must be a probability in [0, 1]")
        for key in ("contrast", "saturation", "blur_sigma", "noise_std"):
            low_high = getattr(self, key)
            if len(low_high) != 2 or not 0.0 <= low_high[0] <= low_high[1]:
                raise ConfigError(f"augment.{key}={low_high} must be [low, high] with 0 <= low <= high")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio


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


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | csv | none
    project: str = "athena-vla"
    mode: str | None = None  # W&B mode; None: WANDB_MODE if set, else offline
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("logger.name", self.name, ("wandb", "csv", "none"))


@dataclass
class CallbacksConfig:
    plot_episodes: int = 3  # held-out episodes in the trajectory plot at each validation
    save_top_k: int = 1
    sim_eval_every_n_val: int = 0  # closed-loop success rate every N validations (0: off)
    sim_eval_episodes: int = 2  # per task


@dataclass
class PathsConfig:
    root_dir: str = "."
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
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = MISSING  # set by Hydra: outputs/train/<date>/<time>[_<name>]
    seed: int = 0
    ckpt_path: str | None = None  # resume from a Lightning checkpoint (or a run folder)
    run_name: str | None = None  # W&B run name; default: the command-line overrides
    experiment: str | None = None  # set by experiment files
    optimized_metric: str | None = "val/loss"  # what train.py returns to a sweeper

    def __post_init__(self) -> None:
        if self.lora.kind == "full" and self.quantization.method is not None:
            raise ConfigError(
                "lora=full cannot train a quantized base; use a LoRA choice with quantization=nf4"
            )


@dataclass
class PredictConfig:
    """`scripts/predict.py`: one action for one image and instruction."""

    checkpoint: str = MISSING  # checkpoint folder (OpenVLA format) or hub id
    image: str = MISSING  # RGB image file (PNG/JPEG, any size: resized like OpenVLA)
    instruction: str = MISSING  # natural-language task, lower-cased into OpenVLA's prompt
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    constrain: bool | None = None  # decode only action tokens (default: the checkpoint's setting)
    dtype: str | None = None  # float32 | bfloat16 | float16 (default: as stored)
    quantization: str | None = None  # nf4 | int8 (bitsandbytes, language model only)
    use_cache: bool = True  # KV cache during decoding


@dataclass
class BenchDataConfig:
    """`scripts/bench_data.py`: loader samples/s (cold, cached) against the training step's consumption."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    train_steps: int = 10  # timed optimizer steps of the model, after `warmup_steps` untimed ones
    warmup_steps: int = 2
    max_samples: int | None = None  # cap the timed epochs (None: the whole train split)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_steps < 1 or self.warmup_steps < 0:
            raise ConfigError("train_steps must be >= 1 and warmup_steps >= 0")


GROUPS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "quantization": QuantizationConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "callbacks": CallbacksConfig,
    "paths": PathsConfig,
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="bench_data_schema", node=BenchDataConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name="schema", node=node)


def to_object(cfg: DictConfig, cls: type):
    """Composed config -> dataclass instance; `__post_init__` checks run here."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "hydra" in cfg:
        del cfg["hydra"]
    merged = OmegaConf.merge(OmegaConf.structured(cls), cfg)
    return OmegaConf.to_object(merged)
