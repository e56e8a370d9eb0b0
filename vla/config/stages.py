"""Schemas of the stages after training: predict, inspect_data, export, benchmark, bench_data,
make_sample_data and evaluate (each `conf/<stage>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.data import AugmentConfig, DataConfig
from vla.config.model import LoraConfig, ModelConfig
from vla.config.sim import EvalSettings, SampleDataSettings
from vla.config.train import LoggerConfig, OptimConfig, PathsConfig


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
        check_choice("samples_from", self.samples_from, ("val", "random"))
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
            check_choice("backends", backend, BACKENDS)
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


@dataclass
class MakeSampleDataConfig(SampleDataSettings):
    """`scripts/make_sample_data.py` (`conf/make_sample_data.yaml`)."""

    output_dir: str | None = None  # None: the settings-keyed cache (what `data=sample` reads)
    workers: int = 1  # rendering processes; the episodes do not depend on it

    def settings(self) -> SampleDataSettings:
        return SampleDataSettings(**{f.name: getattr(self, f.name) for f in fields(SampleDataSettings)})


@dataclass
class EvaluateConfig(EvalSettings):
    """`scripts/evaluate.py` (`conf/evaluate.yaml`)."""

    checkpoint: str | None = MISSING  # model folder or training run folder; null: baselines only
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    output_dir: str | None = None  # None: the Hydra run folder outputs/evaluate/<date>/<time>
    wandb: bool = False  # log the table and GIFs to Weights & Biases
    wandb_project: str = "athena-vla"

    def settings(self) -> EvalSettings:
        return EvalSettings(**{f.name: getattr(self, f.name) for f in fields(EvalSettings)})
