"""Every shipped YAML composes against the typed schema; bad keys and values fail at start-up."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import CONF, compose_config
from vla.config import (
    BenchDataConfig,
    BenchmarkConfig,
    ConfigError,
    ConvertDataConfig,
    DoctorConfig,
    EvaluateConfig,
    ExportConfig,
    InspectDataConfig,
    MakeSampleDataConfig,
    PredictConfig,
    TrainConfig,
)
from vla.config.deploy import BenchServeConfig, RunRobotConfig, ServeConfig
from vla.config.learn import LearnOnlineConfig

# Each entry point's config (conf/<name>.yaml), its schema and the keys it needs from the command line
# (the ones Hydra fills from its run folder are given here, as no app is running).
STAGES = {
    "train": (TrainConfig, ["run_dir=/tmp/never-written"]),
    "predict": (PredictConfig, ["image=frame.png", "instruction=reach the red ball"]),
    "export": (ExportConfig, ["out_dir=/tmp/never-written"]),
    "benchmark": (BenchmarkConfig, []),
    "evaluate": (EvaluateConfig, []),
    "make_sample_data": (MakeSampleDataConfig, []),
    "convert_data": (ConvertDataConfig, ["output_dir=/tmp/never-written"]),
    "inspect_data": (InspectDataConfig, ["run_dir=/tmp/never-written"]),
    "doctor": (DoctorConfig, ["run_dir=/tmp/never-written"]),
    "bench_data": (BenchDataConfig, []),
    "serve": (ServeConfig, ["checkpoint=some/export"]),
    "run_robot": (RunRobotConfig, ["output_dir=/tmp/never-written"]),
    "bench_serve": (BenchServeConfig, ["output_dir=/tmp/never-written"]),
    "learn_online": (LearnOnlineConfig, ["start=some/run", "output_dir=/tmp/never-written"]),
}
# Group choices that need a key of their own.
CHOICE_OVERRIDES = {
    ("data", "isaac"): ["data.root=/x"],
    ("data", "pickle"): ["data.root=/x"],
    ("data", "lerobot"): ["data.root=/x"],
    ("data", "hdf5"): ["data.root=/x"],
}
# The default lora=full cannot train a quantized base (tested below): in training, quantization goes with LoRA.
TRAIN_CHOICE_OVERRIDES = {
    ("quantization", "nf4"): ["lora=efficient"],
    ("quantization", "int8"): ["lora=efficient"],
}


def compose_train(overrides: list[str]) -> TrainConfig:
    return compose_config("train", [*overrides, "run_dir=/tmp/never-written"], TrainConfig)


def config_groups(name: str) -> list[str]:
    """The groups in conf/<name>.yaml's defaults list (not Hydra's own, not `override`s)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")).get("defaults", [])
    return [
        next(iter(entry))
        for entry in defaults
        if isinstance(entry, dict) and not next(iter(entry)).startswith(("override ", "hydra/"))
    ]


def group_folders() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir())


def group_files() -> list[tuple[str, str, str]]:
    """(config, group, choice) for every YAML file of every group folder, with every entry point's
    config that has that group."""
    out = []
    for group in group_folders():
        for f in sorted((CONF / group).glob("*.yaml")):
            for name in sorted(STAGES):
                if group in config_groups(name):
                    out.append((name, group, f.stem))
    return out


def test_stage_table_lists_every_entry_point_and_every_group_is_used():
    assert set(STAGES) == {p.stem for p in CONF.glob("*.yaml")}
    used = {group for name in STAGES for group in config_groups(name)}
    assert set(group_folders()) <= used, f"groups in no entry point's defaults: {set(group_folders()) - used}"
    # The train config has every group (experiment, debug and hparams_search are train-only).
    assert set(config_groups("train")) == set(group_folders())


@pytest.mark.parametrize("name,group,choice", group_files(), ids=lambda v: str(v))
def test_every_group_file_composes(name, group, choice):
    schema, required = STAGES[name]
    overrides = [*required, f"{group}={choice}", *CHOICE_OVERRIDES.get((group, choice), [])]
    if name == "train":
        overrides += TRAIN_CHOICE_OVERRIDES.get((group, choice), [])
    if name == "make_sample_data" and group == "data" and choice != "sample":
        with pytest.raises(ConfigError, match="make_sample_data generates data=sample's episodes"):
            compose_config(name, overrides, schema)
        return
    cfg = compose_config(name, overrides, schema)
    assert isinstance(cfg, schema)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_entry_point_composes_with_its_required_keys(name):
    schema, required = STAGES[name]
    assert isinstance(compose_config(name, required, schema), schema)


def test_hydra_output_dir_is_the_run_folder():
    """Without run_dir=, train's run_dir (export's out_dir) is the folder Hydra runs in."""
    run = compose_config("train", ["hydra.runtime.output_dir=/tmp/r"], TrainConfig, return_hydra_config=True)
    export = compose_config(
        "export", ["hydra.runtime.output_dir=/tmp/e"], ExportConfig, return_hydra_config=True
    )
    assert (run.run_dir, export.out_dir) == ("/tmp/r", "/tmp/e")


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")))
def test_search_spaces_name_existing_keys(choice):
    cfg = compose_config(
        "train", [f"hparams_search={choice}", "run_dir=/tmp/never-written"], return_hydra_config=True
    )
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key


def test_lora_choices_hold_the_specified_values():
    expected = {
        "humanoid_default": (
            64,
            16,
            0.1,
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
            False,
        ),
        "efficient": (32, 16, 0.05, ["q_proj", "v_proj", "up_proj", "down_proj"], False),
        "high_performance": (
            128,
            32,
            0.1,
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "lm_head",
                "embed_tokens",
            ],
            True,
        ),
    }
    assert {p.stem for p in (CONF / "lora").glob("*.yaml")} == {*expected, "full"}
    for name, (r, alpha, dropout, targets, dora) in expected.items():
        lora = compose_train([f"lora={name}"]).lora
        assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.use_dora) == (
            r,
            alpha,
            dropout,
            targets,
            dora,
        )
        assert lora.kind == "lora"
    assert compose_train(["lora=full"]).lora.kind == "full"


def test_defaults_are_the_embedded_tiny_setup():
    cfg = compose_train([])
    assert (cfg.model.name, cfg.model.pretrained, cfg.lora.name, cfg.data.format) == (
        "openvla_tiny",
        None,
        "full",
        "sample",
    )
    # The default recipe (conf/train.yaml, conf/model/openvla_tiny.yaml; README Results,
    # docs/experiments/athena_suite.md): the continuous head reading one position per chunk step, the
    # state and FiLM, data=sample's 8 grounding values, 2800 steps.
    assert (cfg.model.action_head, cfg.model.proprio, cfg.model.layout.chunk_size) == ("l1", True, 5)
    assert (cfg.model.film, cfg.model.layout.chunk_positions, cfg.model.layout.grounding) == (
        True,
        "steps",
        8,
    )
    assert (cfg.optim.action_loss, cfg.trainer.max_steps, cfg.data.batch_size) == ("mse", 2800, 16)
    # Data without grounding values trains without grounding (data.grounding_values, 0 but for sample).
    isaac = compose_train(["data=isaac", "data.root=/tmp/never-read"])
    assert (isaac.data.grounding_values, isaac.model.layout.grounding) == (0, 0)
    # experiment=athena_suite is the default's recipe with 10000 steps and 1600 reach scenes; its
    # optimiser, its other scene settings and its model are the default's.
    suite = compose_train(["experiment=athena_suite"])
    assert suite.optim == cfg.optim
    reach = {"task_episodes": {"reach_ball": 1600}}
    assert suite.data.sample == OmegaConf.merge(cfg.data.sample, reach)
    assert cfg.data.sample.task_episodes["reach_ball"] == 800
    assert suite.trainer.max_steps == 10000
    assert suite.model == cfg.model
    assert (cfg.trainer.accelerator, cfg.logger.name, cfg.quantization.method) == ("cpu", "wandb", None)
    assert cfg.trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("override", ["+trainer.max_stepz=3", "trainer.max_stepz=3", "+foo=1"])
def test_unknown_key_names_the_key(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_train([override])
    assert override.split("=")[0].lstrip("+").split(".")[-1] in str(err.value) + str(err.value.__cause__)


def test_unknown_group_choice_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["lora=tiny"])
    message = str(err.value)
    assert "lora" in message and "efficient" in message and "humanoid_default" in message


def test_wrong_type_fails():
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_train(["trainer.max_steps=many"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["quantization.method=nf8"],
            "quantization.method='nf8' is not valid; choose one of \\[None, 'nf4', 'int8'\\]",
        ),
        (["data=isaac", "data.root=null"], "data.root is required"),
        (["lora=full", "quantization=nf4"], "lora=full cannot train a quantized base"),
        (["optim.ema_decay=1.0"], "optim.ema_decay=1.0 must be in \\[0, 1\\)"),
        (["lora=efficient", "optim.ema_decay=0.999"], "use it with lora=full"),
        (["data.on_error=ignore"], "data.on_error='ignore' is not valid"),
        (["data.sample.camera=top"], "data.sample.camera='top': choose from \\['front', 'upper_body'\\]"),
        (["data.sample.expert_noise=-0.1"], "data.sample.expert_noise=-0.1: must be >= 0"),
        (
            ["model.action_token_init=sine"],
            "model.action_token_init='sine' is not valid; choose one of \\['ordinal', 'random'\\]",
        ),
    ],
)
def test_bad_values_fail_with_the_key(overrides, message):
    with pytest.raises((ConfigError, ValidationError)) as err:
        compose_train(overrides)
    assert err.match(message)


@pytest.mark.parametrize("name", ["make_sample_data", "evaluate", "predict"])
def test_other_entry_points_compose(name):
    cfg = compose_config(name)
    if name != "predict":
        # The scene's camera, size and rate are the dataset's (data.sample), the sim group the rest.
        sample = cfg.data.sample
        assert (sample.image_size, sample.control_hz, sample.camera) == (112, 5, "upper_body")
        assert cfg.sim.mesh_reduction == 0.85 and cfg.sim.safety.enabled
