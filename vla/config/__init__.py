"""The typed schema behind every YAML file in `conf/`: plain dataclasses, importable without torch.

One module per concern (`model`, `data`, `train`, `sim`, `stages`); this package re-exports them.
Each group's YAML files are validated against one dataclass (registered in Hydra's ConfigStore as
`<group>/schema` and listed first in each file's defaults), so an unknown or mistyped key fails at
start-up with its name, and a value of the wrong type fails with the expected type. Entry points
convert the composed config to these objects once (`to_object`).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vla.config.base import ConfigError, check_choice
from vla.config.data import AnnotationConfig, AugmentConfig, DataConfig, FilterConfig, SampleDataConfig
from vla.config.deploy import (
    BenchServeConfig,
    ControlSettings,
    RunRobotConfig,
    ServeConfig,
    ServerSettings,
)
from vla.config.doctor import DoctorConfig, DoctorSettings
from vla.config.learn import LearnOnlineConfig, LearnSettings, RoundTraining
from vla.config.model import (
    ACTION_TOKEN_INITS,
    HEADS,
    LLAMA_TARGETS,
    ActionLayout,
    LayoutConfig,
    LoraConfig,
    ModelConfig,
    QuantizationConfig,
    TinyArchitecture,
)
from vla.config.sim import (
    BASELINES,
    CAMERAS,
    EVALUATION_SEED_BASE,
    TASK_NAMES,
    EvalSettings,
    SafetySettings,
    SampleDataSettings,
    SimConfig,
    SimSettings,
)
from vla.config.stages import (
    BACKENDS,
    LATEST,
    POLICY_BACKENDS,
    RUN_OVERRIDE_GROUPS,
    BenchDataConfig,
    BenchmarkConfig,
    ConvertDataConfig,
    EvaluateConfig,
    ExportConfig,
    InspectDataConfig,
    MakeSampleDataConfig,
    PredictConfig,
)
from vla.config.train import (
    CallbacksConfig,
    LoggerConfig,
    OptimConfig,
    PathsConfig,
    TrainConfig,
    TrainerConfig,
)

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
    "sim": SimConfig,
}


def _export_schema() -> DictConfig:
    """ExportConfig with its override groups open, so that `model.pretrained=DIR` needs no `+`: Hydra
    would refuse a key the empty dict does not have. The keys are checked against TrainConfig when
    the run's config is loaded (`vla.training.runs.load_train_config`)."""
    node = OmegaConf.structured(ExportConfig)
    for group in RUN_OVERRIDE_GROUPS:
        OmegaConf.set_struct(node[group], False)
    return node


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (imports Hydra; the dataclasses themselves do not)."""
    from hydra.core.config_store import ConfigStore

    # `${name_suffix:${run_name}}` in run folders: "_<run_name>" when the run is named, else nothing.
    if not OmegaConf.has_resolver("name_suffix"):
        OmegaConf.register_new_resolver("name_suffix", lambda name: f"_{name}" if name else "")
    # `${claim_dir:PATH}` in run folders: PATH, or PATH_2, ... when another run holds it (created on
    # resolution; cached, as Hydra's own `now`, so a run resolving its folder twice gets one folder).
    if not OmegaConf.has_resolver("claim_dir"):
        from vla.outputs import claim_folder

        OmegaConf.register_new_resolver("claim_dir", claim_folder, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="inspect_data_schema", node=InspectDataConfig)
    cs.store(name="export_schema", node=_export_schema())
    cs.store(name="benchmark_schema", node=BenchmarkConfig)
    cs.store(name="bench_data_schema", node=BenchDataConfig)
    cs.store(name="make_sample_data_schema", node=MakeSampleDataConfig)
    cs.store(name="convert_data_schema", node=ConvertDataConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="run_robot_schema", node=RunRobotConfig)
    cs.store(name="bench_serve_schema", node=BenchServeConfig)
    cs.store(name="doctor_schema", node=DoctorConfig)
    cs.store(name="learn_online_schema", node=LearnOnlineConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name="schema", node=node)


def to_object(cfg: DictConfig | dict, cls: type):
    """Composed config (or a plain dict) -> `cls` instance; unknown keys and wrong types fail by name,
    and the dataclasses' `__post_init__` checks run here."""
    cfg = OmegaConf.create(cfg)
    if "hydra" in cfg:  # Hydra's own node resolves only inside a running app: leave it out first
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    merged = OmegaConf.merge(OmegaConf.structured(cls), cfg)
    return OmegaConf.to_object(merged)


# The simulator's entry points used this name; one function converts every schema.
to_settings = to_object

__all__ = [
    "ACTION_TOKEN_INITS",
    "HEADS",
    "ActionLayout",
    "LayoutConfig",
    "BACKENDS",
    "BASELINES",
    "LATEST",
    "POLICY_BACKENDS",
    "CAMERAS",
    "EVALUATION_SEED_BASE",
    "GROUPS",
    "LLAMA_TARGETS",
    "RUN_OVERRIDE_GROUPS",
    "TASK_NAMES",
    "AnnotationConfig",
    "AugmentConfig",
    "BenchDataConfig",
    "BenchmarkConfig",
    "CallbacksConfig",
    "ConfigError",
    "ConvertDataConfig",
    "BenchServeConfig",
    "ControlSettings",
    "RunRobotConfig",
    "ServeConfig",
    "ServerSettings",
    "DataConfig",
    "DoctorConfig",
    "DoctorSettings",
    "EvalSettings",
    "EvaluateConfig",
    "ExportConfig",
    "FilterConfig",
    "InspectDataConfig",
    "LearnOnlineConfig",
    "LearnSettings",
    "LoggerConfig",
    "LoraConfig",
    "MakeSampleDataConfig",
    "ModelConfig",
    "OptimConfig",
    "PathsConfig",
    "PredictConfig",
    "QuantizationConfig",
    "RoundTraining",
    "SafetySettings",
    "SampleDataConfig",
    "SampleDataSettings",
    "SimConfig",
    "SimSettings",
    "TinyArchitecture",
    "TrainConfig",
    "TrainerConfig",
    "check_choice",
    "register_configs",
    "to_object",
    "to_settings",
]
