"""Schemas of the stages after training: predict, inspect_data, export, benchmark, bench_data,
make_sample_data and evaluate (each `conf/<stage>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.data import AugmentConfig, DataConfig, SampleDataConfig
from vla.config.model import LoraConfig, ModelConfig, QuantizationConfig
from vla.config.sim import (
    BASELINES,
    EVALUATION_SEED_BASE,
    EvalSettings,
    SimConfig,
    check_tasks,
    refuse_disturbance,
)
from vla.config.train import LoggerConfig, OptimConfig, PathsConfig

# A stage's `checkpoint=` / `run=` default: the newest finished folder of the stage before it under
# paths.output_dir (vla.outputs.resolve_latest), printed when used.
LATEST = "latest"
POLICY_BACKENDS = ("torch", "onnx", "onnx_int8", "tensorrt")  # vla.inference.load_policy


@dataclass
class PredictConfig:
    """`scripts/predict.py`: the action (chunk) for one image and instruction."""

    # A training run, an export or an OpenVLA-format folder (or hub id); latest: the newest training run.
    checkpoint: str = LATEST
    image: str = MISSING  # RGB image file (PNG/JPEG, any size: resized like OpenVLA)
    instruction: str = MISSING  # natural-language task, lower-cased into OpenVLA's prompt
    backend: str = "torch"  # torch | onnx | onnx_int8 | tensorrt (the ONNX ones need an export folder)
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    constrain: bool | None = None  # decode only action tokens (default: the checkpoint's layout)
    state: list[float] | None = None  # robot state in robot units, for a policy trained with model.proprio
    dtype: str | None = None  # torch backend: float32 | bfloat16 | float16 (default: as stored)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)  # torch backend: nf4 | int8
    paths: PathsConfig = field(default_factory=PathsConfig)  # where `latest` is looked for

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, POLICY_BACKENDS)
        if self.dtype is not None:
            check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if not self.instruction.strip():
            raise ConfigError("instruction= is empty: say what the robot should do")


@dataclass
class InspectDataConfig:
    """`scripts/inspect_data.py`: what the training data looks like after loading, filter and annotation,
    and what the model sees of it after augmentation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # its input size: the frames' size in the sheet
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # applied to the sheet as in training
    sim: SimConfig = field(default_factory=SimConfig)  # generates data=sample's episodes on first use
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
    target_modules, use_dora, kind; quantization.method; model.layout's head, chunk_size, grounding, parallel_decoding) cannot be changed."""

    run: str = LATEST  # training run folder (config.yaml + adapter/ or model/); latest: the newest one
    out_dir: str = MISSING  # set by Hydra: outputs/export/<date>/<time>; or any folder
    held_out: int = 8  # held-out frames for the merge and ONNX parity checks
    samples_from: str = "val"  # val: frames of the run's validation episodes | random: noise images
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the run's model.* keys
    lora: dict[str, Any] = field(default_factory=dict)  # overrides of lora.* (only harmless ones pass)
    quantization: dict[str, Any] = field(default_factory=dict)  # overrides of quantization.*
    data: dict[str, Any] = field(default_factory=dict)  # overrides of data.* (data.root=DIR)
    # Export the ONNX graphs (token head: prefix.onnx + decode.onnx with a KV cache; l1 head: chunk.onnx)
    # and check their parity with PyTorch.
    onnx: bool = True
    int8: bool = True  # also onnxruntime dynamic int8 graphs; report their agreement with float32
    tensorrt: bool = True  # build TensorRT engines when `tensorrt` imports (skipped otherwise)
    opset: int = 17
    logits_atol: float = 1e-4  # token head: ONNX vs PyTorch float32 logits, max abs difference allowed
    # Continuous heads: max abs difference of normalized actions allowed between merged and adapter
    # model, reloaded and merged model, ONNX and PyTorch float32 (a bf16 run's merge needs a looser one).
    actions_atol: float = 1e-5
    threads: int = 0  # onnxruntime intra-op threads for the checks (0: its default)
    paths: PathsConfig = field(default_factory=PathsConfig)  # outputs/export/... lives under paths.output_dir
    sim: SimConfig = field(
        default_factory=SimConfig
    )  # regenerates data=sample's episodes if the cache is gone

    def __post_init__(self) -> None:
        check_choice("samples_from", self.samples_from, ("val", "random"))
        if self.held_out < 1:
            raise ConfigError(f"held_out={self.held_out} must be >= 1")
        if self.int8 and not self.onnx:
            raise ConfigError(
                "int8=true needs onnx=true (the int8 graphs are quantized from the ONNX export)"
            )
        if self.logits_atol <= 0 or self.actions_atol <= 0:
            raise ConfigError(
                f"logits_atol={self.logits_atol} and actions_atol={self.actions_atol} must be > 0"
            )


BACKENDS = ("torch_fp32", "torch_bf16", "torch_nf4", "onnx_fp32", "onnx_int8", "tensorrt")


@dataclass
class BenchmarkConfig:
    """`scripts/benchmark.py`: per-chunk latency (one query = one chunk of K actions) of each runtime on an
    export folder's held-out samples, and a projection of openvla-7b on a Jetson Orin NX 16GB."""

    # An export folder written by scripts/export.py (model/, onnx/, heldout.npz); latest: the newest one.
    checkpoint: str = LATEST
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))  # tensorrt: only where it imports
    warmup: int = 3  # untimed queries per backend
    actions: int = 20  # timed queries per backend, one chunk each (held-out samples, cycled)
    threads: int = 0  # torch and onnxruntime intra-op threads (0: the number of CPU cores)
    target_tokens_per_s: float = 8.0  # token heads: pass/fail per backend (the seed's Jetson Orin target)
    # Every head: pass/fail on the achievable control rate (K actions per p99 chunk latency); None: the
    # control_hz of the scene the policy trained in (export.json), not judged when there is none.
    target_control_hz: float | None = None
    out_dir: str | None = None  # where the reports go (default: the checkpoint folder)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(name="none"))
    paths: PathsConfig = field(default_factory=PathsConfig)  # where `latest` is looked for

    def __post_init__(self) -> None:
        for backend in self.backends:
            check_choice("backends", backend, BACKENDS)
        if self.actions < 1 or self.warmup < 0:
            raise ConfigError(f"actions={self.actions} must be >= 1 and warmup={self.warmup} >= 0")
        if self.target_control_hz is not None and self.target_control_hz <= 0:
            raise ConfigError(f"target_control_hz={self.target_control_hz} must be > 0 (or null)")


@dataclass
class BenchDataConfig:
    """`scripts/bench_data.py`: loader samples/s (cold, cached) against the training step's consumption."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sim: SimConfig = field(default_factory=SimConfig)  # generates data=sample's episodes on first use
    paths: PathsConfig = field(default_factory=PathsConfig)
    train_steps: int = 10  # timed optimizer steps of the model, after `warmup_steps` untimed ones
    warmup_steps: int = 2
    max_samples: int | None = None  # cap the timed epochs (None: the whole train split)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_steps < 1 or self.warmup_steps < 0:
            raise ConfigError("train_steps must be >= 1 and warmup_steps >= 0")


@dataclass
class MakeSampleDataConfig:
    """`scripts/make_sample_data.py`: generate the `data.sample` dataset, the one `data=sample` training
    reads (same `data`, `sim` and `paths` groups, so `make sim-data` then `make train` share it)."""

    data: DataConfig = field(default_factory=DataConfig)  # data.sample: tasks, episodes, camera, size, rate
    sim: SimConfig = field(default_factory=SimConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)  # the cache it goes into: paths.cache_dir
    output_dir: str | None = None  # None: the settings-keyed cache (what `data=sample` reads); or any folder
    write_pickle: bool = False  # also write `demos.pkl` in the seed's teleop pickle format (output_dir only)

    def __post_init__(self) -> None:
        if self.data.format != "sample":
            raise ConfigError(f"data={self.data.name}: make_sample_data generates data=sample's episodes")
        refuse_disturbance(self.sim.disturbance, "make_sample_data")
        if self.write_pickle and self.output_dir is None:
            raise ConfigError(
                "write_pickle=true needs output_dir=DIR (the cache holds Isaac episode folders only)"
            )


@dataclass
class ConvertDataConfig:
    """`scripts/convert_data.py`: export the `data` group's episodes (sample, isaac, pickle, hdf5 or
    lerobot) as a LeRobotDataset v3 folder (`vla.data.lerobot_writer`)."""

    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)  # generates data=sample's episodes on first use
    paths: PathsConfig = field(default_factory=PathsConfig)
    output_dir: str = MISSING  # the dataset folder to write (written beside it, then renamed into place)
    fps: float | None = None  # frames per second of the dataset; null: the episodes' own (they must agree)
    robot_type: str | None = None  # info.json's robot_type; null: athena for data=sample, else none
    video: bool = True  # cameras as MP4 (libx264, yuv420p); false: PNG images inside the Parquet files
    crf: int = 18  # libx264 quality (lower: closer to the source, larger files; LeRobot's own is 30)
    episodes_per_file: int = 1000  # episodes per data Parquet file and per MP4
    overwrite: bool = False  # replace an existing output_dir (only once the new dataset is complete)

    def __post_init__(self) -> None:
        if self.episodes_per_file < 1:
            raise ConfigError(f"episodes_per_file={self.episodes_per_file} must be >= 1")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crf={self.crf} must be in 0..51 (libx264's range)")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"fps={self.fps} must be > 0 (or null: the episodes' own)")
        refuse_disturbance(self.sim.disturbance, "convert_data")


@dataclass
class EvaluateConfig:
    """`scripts/evaluate.py`: closed-loop success in the simulator, with the expert and random baselines.

    The scene (camera, image size, action rate) is a training run's own `data.sample` when the
    checkpoint is a run trained on simulator data, else the composed `data.sample`."""

    # A training run, an export or an OpenVLA-format folder; latest: the newest training run; null:
    # the baselines only.
    checkpoint: str | None = LATEST
    backend: str = "torch"  # torch | onnx | onnx_int8 | tensorrt (the ONNX ones need an export folder)
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    tasks: list[str] = field(default_factory=lambda: ["all"])
    episodes_per_task: int = 50
    seed: int = EVALUATION_SEED_BASE  # first held-out episode seed (generation uses lower seeds)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    gif_episodes: int = 2  # rollouts per task drawn into `<task>.gif` (0: no GIFs)
    swap_color: bool = False  # language probe: reach_ball's instruction names the nearest distractor's colour
    execute_steps: int | None = None  # chunk steps run before the next query (null: all; 1: every step)
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    output_dir: str | None = None  # None: the Hydra run folder outputs/evaluate/<date>/<time>
    wandb: bool = False  # log the table and GIFs to Weights & Biases
    wandb_project: str = "athena-vla"

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, POLICY_BACKENDS)
        self.tasks = check_tasks(self.tasks, "tasks")

    def settings(self, sample: SampleDataConfig | None = None) -> EvalSettings:
        """The evaluation in the scene of `sample` (default: the composed data.sample)."""
        sample = sample or self.data.sample
        return EvalSettings(
            tasks=list(self.tasks),
            episodes_per_task=self.episodes_per_task,
            seed=self.seed,
            baselines=list(self.baselines),
            gif_episodes=self.gif_episodes,
            swap_color=self.swap_color,
            execute_steps=self.execute_steps,
            sim=sample.sim_settings(self.sim),
        )
