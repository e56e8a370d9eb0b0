"""Every shipped YAML composes against the typed schema; bad keys and values fail at start-up."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import ROOT
from vla.config import ConfigError, TrainConfig, register_configs, to_object

CONF = ROOT / "conf"
register_configs()


def compose_train(overrides: list[str]) -> TrainConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "run_dir=/tmp/never-written"])
    return to_object(cfg, TrainConfig)


def group_files() -> list[tuple[str, str]]:
    out = []
    # conf/sim is the simulator's group, used by make_sample_data.yaml and evaluate.yaml.
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "sim"):
        for f in sorted(group.glob("*.yaml")):
            out.append((group.name, f.stem))
    return out


@pytest.mark.parametrize("group,choice", group_files(), ids=lambda v: str(v))
def test_every_group_file_composes(group, choice):
    extra = {"data": {"isaac": ["data.root=/x"], "pickle": ["data.root=/x"]}}
    overrides = [f"{group}={choice}", *extra.get(group, {}).get(choice, [])]
    if group == "hparams_search":
        pytest.skip("the sweeper config is exercised by the Optuna test")
    cfg = compose_train(overrides)
    assert isinstance(cfg, TrainConfig)


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
        "humanoid_default",
        "sample",
    )
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
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name)
    if name != "predict":
        # The scene's camera, size and rate are the dataset's (data.sample), the sim group the rest.
        sample = cfg.data.sample
        assert (sample.image_size, sample.control_hz, sample.camera) == (112, 25, "front")
        assert cfg.sim.mesh_reduction == 0.85 and cfg.sim.safety.enabled
