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

from vla.tiny import ACTION_TOKEN_INITS, TinyArchitecture

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
    # New tiny model: "ordinal" gives the 256 action tokens' embeddings a code in which neighbouring
    # bins are alike (vla.tiny.init_action_tokens_ordinal); "random" initialises them as any token.
    action_token_init: str = "ordinal"
    # Parallel decoding (OpenVLA-OFT): the action chunk's K*D tokens come from one forward pass over
    # placeholder inputs instead of K*D autoregressive steps, so no action token sees the ones before
    # it (in training they are teacher forced, at prediction the model's own, errors and all).
    # Grounding tokens (data.grounding) stay autoregressive. Part of the trained model (locked).
    parallel_decoding: bool = False

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model.action_token_init", self.action_token_init, ACTION_TOKEN_INITS)


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
    # Actions per second of the generated episodes and of the closed-loop checks during training
    # (the simulator's physics runs at 500 Hz, so it must divide 500). OpenVLA's Bridge data is 5 Hz.
    control_hz: int = 25
    # The scene camera: front (the whole robot) or upper_body (the chest and the reach tasks' balls,
    # which then span ~3x as many pixels: what a small input size needs to place a hand on a ball).
    camera: str = "front"
    # Noise injection while recording (std in rad; vla.sim.config.SampleDataSettings.expert_noise): the
    # robot is pushed off the expert's path and the recorded actions lead back. 0: clean demos.
    expert_noise: float = 0.0
    workers: int = 1  # rendering processes when the dataset is generated (the content does not depend on it)

    def __post_init__(self) -> None:
        for key in ("episodes_per_task", "workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.sample.{key}={getattr(self, key)}: must be at least 1")
        if not self.expert_noise >= 0:
            raise ConfigError(
                f"data.sample.expert_noise={self.expert_noise}: must be >= 0 (rad; 0: clean demos)"
            )
        from vla.sim.config import CAMERAS

        if self.camera not in CAMERAS:
            raise ConfigError(f"data.sample.camera={self.camera!r}: choose from {list(CAMERAS)}")

    def sim_settings(self) -> Any:
        """The simulator settings (vla.sim.config.SimSettings) the episodes are recorded with and the
        closed-loop checks run at: camera, image size and action rate."""
        from vla.sim.config import SimSettings

        return SimSettings(image_size=self.image_size, control_hz=self.control_hz, camera=self.camera)


@dataclass
class FilterConfig:
    """Episode quality rules (`vla.data.quality`), applied after loading and before the split.

    The defaults keep every episode of the simulator's sample data (60-75 steps; mean state variance
    0.004-0.04) and drop only degenerate ones: a handful of steps, or a robot that never moves.
    Non-finite actions or states always drop an episode (they cannot be trained on).
    """

    # Steps; shorter episodes are dropped (rule `too_short`). 5 steps is 0.2 s at athena's 25 Hz: too
    # short to show a motion, yet small enough for the tiny test datasets.
    min_length: int = 5
    max_length: int | None = None  # steps; longer episodes are dropped (rule `too_long`); None: no limit
    # Mean over state dimensions of each dimension's variance over time (rule `static`); 0 turns it off.
    # Episodes without state dimensions cannot be judged and are kept (counted as `static_unjudged`).
    min_state_variance: float = 1e-4

    def __post_init__(self) -> None:
        if self.min_length < 1:
            raise ConfigError(f"data.filter.min_length={self.min_length} must be >= 1")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ConfigError(
                f"data.filter.max_length={self.max_length} must be >= data.filter.min_length="
                f"{self.min_length} (or null for no limit)"
            )
        if self.min_state_variance < 0:
            raise ConfigError(f"data.filter.min_state_variance={self.min_state_variance} must be >= 0")


@dataclass
class AnnotationConfig:
    """Per-step language from motion (`vla.data.annotate`), used by data.instructions=annotated|both.

    Motion of a DoF group at step t: the L2 norm of the group's action change from step t-1 to t (rad
    per step for joint-position targets), averaged over `window` steps centred on t. The defaults fit
    athena (`vla.sim.athena`: legs 0-11, arms 12-19, waist 20-22; 25 Hz): its experts move a group by
    0.01-0.15 rad per step while they act and exactly 0 while they hold.
    """

    leg_dims: list[int] = field(default_factory=lambda: list(range(0, 12)))
    arm_dims: list[int] = field(default_factory=lambda: list(range(12, 20)))
    torso_dims: list[int] = field(default_factory=lambda: list(range(20, 23)))  # head / waist
    window: int = 5  # steps in the centred moving average (odd; 1: no smoothing)
    move_threshold: float = 0.01  # a group moves when its motion is at least this
    still_threshold: float = 0.001  # below this in every group: idle; between the two: preparation
    seed: int = 0  # phrasing choice (and the metadata/annotated choice of instructions=both)

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"data.annotation.window={self.window} must be an odd number >= 1")
        if not 0 <= self.still_threshold <= self.move_threshold:
            raise ConfigError(
                "data.annotation thresholds must satisfy 0 <= still_threshold <= move_threshold, got "
                f"still_threshold={self.still_threshold}, move_threshold={self.move_threshold}"
            )
        seen: dict[int, str] = {}
        for key in ("leg_dims", "arm_dims", "torso_dims"):
            dims = getattr(self, key)
            if not dims:
                raise ConfigError(f"data.annotation.{key} must list at least one action dimension")
            for dim in dims:
                if dim < 0:
                    raise ConfigError(f"data.annotation.{key} has negative dimension {dim}")
                if dim in seen:
                    raise ConfigError(
                        f"data.annotation.{key} and data.annotation.{seen[dim]} both hold dimension {dim}"
                    )
                seen[dim] = key


@dataclass
class DataConfig:
    """Where the demonstrations come from and how they are split and batched."""

    name: str = "sample"
    format: str = "sample"  # sample | isaac | pickle
    root: str | None = None  # isaac: folder of episodes; pickle: a file or a folder of them
    dataset_key: str = "athena_sim"  # key of the statistics in dataset_statistics.json
    success_only: bool = False  # keep only episodes recorded as successful (applied by data.filter)
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
    # Leave no-op steps out of the train split: steps whose whole chunk repeats the previous action's
    # tokens (the robot holds still), as OpenVLA drops LIBERO's no-op actions. Validation keeps them.
    drop_idle_frames: bool = False
    # Grounding targets predicted before the actions (vla.data.grounding, ECoT-style): this many values
    # per episode, from metadata 'grounding' or a simulator reach scene's balls (8); 0: off (OpenVLA).
    grounding: int = 0
    grounding_weight: float = 1.0  # training loss weight of a grounding token (an action token's is 1)
    grounding_weight_steps: int | None = None  # optimizer steps that weight holds for, then 1; null: all
    # Teacher-forcing noise: in training, each action token of the inputs (not the labels) is moved by
    # a uniform shift of -token_noise_bins..token_noise_bins bins with probability token_noise, so the later
    # tokens of a chunk learn to read the image and the grounding instead of copying the true ones
    # before them (which prediction does not have). 0: off (OpenVLA).
    token_noise: float = 0.0
    token_noise_bins: int = 8
    cache_images: bool = True  # decode each frame once into a memory-mapped uint8 cache (paths.cache_dir)
    sample: SampleDataConfig = field(default_factory=SampleDataConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # Training instruction of each step. metadata: the episode's instruction; annotated: a phrasing of it
    # for the step's motion phase (data.annotation); both: a seeded per-step choice between the two.
    instructions: str = "metadata"
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)

    def __post_init__(self) -> None:
        _choice("data.format", self.format, ("sample", "isaac", "pickle"))
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        _choice("data.instructions", self.instructions, ("metadata", "annotated", "both"))
        if self.chunk_size < 1:
            raise ConfigError(f"data.chunk_size={self.chunk_size} must be >= 1 (1: one action per step)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.grounding < 0:
            raise ConfigError(f"data.grounding={self.grounding} must be >= 0 (0: no grounding tokens)")
        if self.grounding_weight < 0:
            raise ConfigError(f"data.grounding_weight={self.grounding_weight} must be >= 0")
        if self.grounding_weight_steps is not None and self.grounding_weight_steps < 0:
            raise ConfigError(f"data.grounding_weight_steps={self.grounding_weight_steps} must be >= 0")
        if not 0.0 <= self.token_noise <= 1.0:
            raise ConfigError(f"data.token_noise={self.token_noise} must be a probability in [0, 1]")
        if self.token_noise_bins < 1:
            raise ConfigError(f"data.token_noise_bins={self.token_noise_bins} must be >= 1")
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
    run_dir: str = MISSING  # set by Hydra: outputs/train/<date>/<time>[_<run_name>]
    seed: int = 0
    ckpt_path: str | None = None  # resume from a Lightning checkpoint (or a run folder)
    run_name: str | None = None  # W&B run name and run-folder suffix; default: the overrides (W&B only)
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
class InspectDataConfig:
    """`scripts/inspect_data.py`: what the training data looks like after loading, filter and annotation,
    and what the model sees of it after augmentation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # its input size: the frames' size in the sheet
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # applied to the sheet as in training
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = MISSING  # set by Hydra: outputs/inspect/<date>/<time>
    sheet_frames: int = 16  # frames in the sample sheet, drawn at random (seeded) over the train split
    plot_episodes: int = 3  # episodes in the action-trajectory plot
    top_instructions: int = 10  # most frequent instructions printed
    # Which frames and episodes are shown, and the training seed whose augmentation the sheet shows
    # (train.py's `seed`: the sheet's frames are the ones those training samples see in epoch 0).
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("sheet_frames", "plot_episodes", "top_instructions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")


# Groups of the run's saved config that `scripts/export.py` takes key overrides for (model.pretrained=...).
RUN_OVERRIDE_GROUPS = ("model", "lora", "quantization", "data")


@dataclass
class ExportConfig:
    """`scripts/export.py`: merge a training run's adapters, export to ONNX, check parity.

    The model, adapter, quantization and data settings are the run's own (its saved config.yaml);
    `model.* lora.* quantization.* data.*` keys given here are merged on top of them and checked
    against the same schema (TrainConfig), e.g. `model.pretrained=DIR` when the base lives elsewhere
    now, `data.root=DIR` when the data moved. Keys that define the saved adapter (lora.r, alpha,
    target_modules, use_dora, kind; quantization.method; data.chunk_size) cannot be changed."""

    run: str = MISSING  # training run folder (config.yaml + adapter/ or model/)
    out_dir: str = MISSING  # set by Hydra: outputs/export/<date>/<time>; or any folder
    held_out: int = 8  # held-out frames for the merge and ONNX parity checks
    samples_from: str = "val"  # val: frames of the run's validation episodes | random: noise images
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the run's model.* keys
    lora: dict[str, Any] = field(default_factory=dict)  # overrides of lora.* (only harmless ones pass)
    quantization: dict[str, Any] = field(default_factory=dict)  # overrides of quantization.*
    data: dict[str, Any] = field(default_factory=dict)  # overrides of data.* (data.root=DIR)
    onnx: bool = True  # export prefix.onnx + decode.onnx (KV cache) and check parity
    int8: bool = True  # also onnxruntime dynamic int8 graphs; report token agreement with float32
    tensorrt: bool = True  # build TensorRT engines when `tensorrt` imports (skipped otherwise)
    opset: int = 17
    logits_atol: float = 1e-4  # ONNX vs PyTorch float32 logits: max abs difference allowed
    threads: int = 0  # onnxruntime intra-op threads for the checks (0: its default)
    paths: PathsConfig = field(default_factory=PathsConfig)  # outputs/export/... lives under paths.output_dir

    def __post_init__(self) -> None:
        _choice("samples_from", self.samples_from, ("val", "random"))
        if self.held_out < 1:
            raise ConfigError(f"held_out={self.held_out} must be >= 1")
        if self.int8 and not self.onnx:
            raise ConfigError(
                "int8=true needs onnx=true (the int8 graphs are quantized from the ONNX export)"
            )


BACKENDS = ("torch_fp32", "torch_bf16", "torch_nf4", "onnx_fp32", "onnx_int8", "tensorrt")


@dataclass
class BenchmarkConfig:
    """`scripts/benchmark.py`: per-action latency of each runtime on an export folder's held-out frames."""

    checkpoint: str = MISSING  # an export folder written by scripts/export.py (model/, onnx/, heldout.npz)
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))  # tensorrt: only where it imports
    warmup: int = 3  # untimed actions per backend
    actions: int = 20  # timed actions per backend (held-out frames, cycled)
    threads: int = 0  # torch and onnxruntime intra-op threads (0: the number of CPU cores)
    target_tokens_per_s: float = 8.0  # pass/fail per backend (the seed's Jetson Orin target)
    out_dir: str | None = None  # where the reports go (default: the checkpoint folder)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(name="none"))

    def __post_init__(self) -> None:
        for backend in self.backends:
            _choice("backends", backend, BACKENDS)
        if self.actions < 1 or self.warmup < 0:
            raise ConfigError(f"actions={self.actions} must be >= 1 and warmup={self.warmup} >= 0")


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


def _export_schema() -> DictConfig:
    """ExportConfig with its override groups open, so that `model.pretrained=DIR` needs no `+`: Hydra
    would refuse a key the empty dict does not have. The keys are checked against TrainConfig when
    the run's config is loaded (`vla.runs.load_train_config`)."""
    node = OmegaConf.structured(ExportConfig)
    for group in RUN_OVERRIDE_GROUPS:
        OmegaConf.set_struct(node[group], False)
    return node


def register_configs() -> None:
    # `${name_suffix:${run_name}}` in run folders: "_<run_name>" when the run is named, else nothing.
    if not OmegaConf.has_resolver("name_suffix"):
        OmegaConf.register_new_resolver("name_suffix", lambda name: f"_{name}" if name else "")
    cs = ConfigStore.instance()
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="inspect_data_schema", node=InspectDataConfig)
    cs.store(name="export_schema", node=_export_schema())
    cs.store(name="benchmark_schema", node=BenchmarkConfig)
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
