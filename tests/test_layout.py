"""The action layout's one home: `ActionLayout` in config.json under "action_layout" (legacy keys of
earlier checkpoints still read, bad layouts refused by name) and `model.layout` in run configs (runs
saved with the keys in their old places still load)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vla.config import ActionLayout
from vla.model.configuration import CheckpointError
from vla.model.layout import LAYOUT_KEY, LEGACY_KEYS, layout_from_config, store_layout

SIZE = 28
# What the code before the action layout wrote into a fine-tune's config.json.
LEGACY_CONFIG = {
    "action_chunk_size": 5,
    "grounding_tokens": 8,
    "parallel_decoding": False,
    "center_crop_scale": 0.9,
    "constrain_action_decoding": True,
}
LEGACY_LAYOUT = ActionLayout(
    chunk_size=5, grounding=8, parallel_decoding=False, center_crop_scale=0.9, constrain_decoding=True
)


@pytest.fixture
def tiny():
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    return build_tiny_model(TinyArchitecture(image_size=SIZE))


def test_legacy_keys_and_stored_layout_are_the_same_layout(tiny, tmp_path):
    from vla.model.modeling import OpenVLA

    assert set(LEGACY_CONFIG) == set(LEGACY_KEYS)  # every key the previous code wrote
    assert layout_from_config(dict(LEGACY_CONFIG)) == LEGACY_LAYOUT
    assert layout_from_config({}) == ActionLayout()  # no layout at all: OpenVLA's own
    assert ActionLayout().constrain_decoding is False and ActionLayout().chunk_size == 1
    extra = {**LEGACY_CONFIG, "unrelated": 1}
    store_layout(extra, LEGACY_LAYOUT)
    assert extra == {"unrelated": 1, LAYOUT_KEY: dataclasses.asdict(LEGACY_LAYOUT)}  # legacy keys gone
    assert layout_from_config(extra) == LEGACY_LAYOUT

    # A folder as the previous code saved it: the legacy keys, no "action_layout".
    old = tiny.save_pretrained(tmp_path / "old")
    raw = json.loads((old / "config.json").read_text())
    raw.pop(LAYOUT_KEY, None)
    (old / "config.json").write_text(json.dumps({**raw, **LEGACY_CONFIG}))
    loaded = OpenVLA.from_pretrained(old)
    assert loaded.layout == LEGACY_LAYOUT
    assert (loaded.action_chunk_size, loaded.grounding_tokens, loaded.parallel_decoding) == (5, 8, False)
    assert loaded.processor.image_transform.center_crop_scale == 0.9

    # A folder written with set_layout: one key, read back into the identical layout.
    layout = ActionLayout(
        chunk_size=3, grounding=2, parallel_decoding=True, constrain_decoding=True, center_crop_scale=0.8
    )
    tiny.set_layout(layout)
    assert tiny.processor.image_transform.center_crop_scale == 0.8
    folder = tiny.save_pretrained(tmp_path / "new")
    saved = json.loads((folder / "config.json").read_text())
    assert saved[LAYOUT_KEY] == dataclasses.asdict(layout) and not set(LEGACY_KEYS) & set(saved)
    reloaded = OpenVLA.from_pretrained(folder)
    assert reloaded.layout == layout
    assert reloaded.processor.image_transform.center_crop_scale == 0.8
    # The folder with legacy keys, saved again, still has its layout.
    assert OpenVLA.from_pretrained(loaded.save_pretrained(tmp_path / "resaved")).layout == LEGACY_LAYOUT


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"chunk_sise": 5}, r"unknown keys \['chunk_sise'\]"),
        ({"chunk_size": "5"}, r"action_layout\.chunk_size='5' must be int"),
        ({"chunk_size": True}, r"action_layout\.chunk_size=True must be int"),
        ({"parallel_decoding": 1}, r"action_layout\.parallel_decoding=1 must be bool"),
        ({"center_crop_scale": "0.9"}, r"action_layout\.center_crop_scale='0\.9' must be float"),
        ({"chunk_size": 0}, r"action_layout: model\.layout\.chunk_size=0 must be >= 1"),
        ({"head": "flow"}, r"action_layout: .*head"),
        (
            {"head": "l1", "action_dim": 3, "chunk_positions": "rows"},
            r"action_layout: .*chunk_positions='rows'",
        ),
        ({"chunk_positions": "steps"}, r"action_layout: chunk_positions='steps' is for a continuous head"),
        ([5], r"action_layout must be an object, got list"),
    ],
)
def test_bad_stored_layout_fails_naming_the_key(tiny, tmp_path, raw, message):
    from vla.model.modeling import OpenVLA

    with pytest.raises(CheckpointError, match=message):
        layout_from_config({LAYOUT_KEY: raw})
    # The same when a saved folder holds it (the error names the file).
    folder = tiny.save_pretrained(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, LAYOUT_KEY: raw}))
    with pytest.raises(CheckpointError, match=message):
        OpenVLA.from_pretrained(folder).layout  # noqa: B018


def test_legacy_run_config_loads_with_the_keys_in_their_new_place(tmp_path):
    """A run's config.yaml as saved before `model.layout`: data.chunk_size, data.grounding,
    model.parallel_decoding and model.constrain_action_decoding in their old places."""
    from vla.config import ConfigError, TrainConfig
    from vla.training.runs import MOVED_KEYS, load_train_config

    cfg = OmegaConf.structured(TrainConfig)
    cfg.run_dir = str(tmp_path)
    saved = OmegaConf.create(OmegaConf.to_container(cfg))
    del saved.model["layout"]
    saved.data.chunk_size = 3
    saved.data.grounding = 2
    saved.model.parallel_decoding = True
    saved.model.constrain_action_decoding = False
    assert {
        "data.chunk_size",
        "data.grounding",
        "model.parallel_decoding",
        "model.constrain_action_decoding",
    } <= set(MOVED_KEYS)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))

    loaded = load_train_config(tmp_path)
    assert loaded.model.layout.chunk_size == 3 and loaded.model.layout.parallel_decoding is True
    assert loaded.model.layout.grounding == 2 and loaded.model.layout.constrain_decoding is False
    assert loaded.model.action_head == "tokens" and loaded.model.proprio is False
    assert loaded.data == TrainConfig(run_dir=str(tmp_path)).data  # nothing else moved
    # Overrides apply on top of the migrated config, and the locked keys are those the run had.
    assert load_train_config(tmp_path, {"model": {"dtype": "bfloat16"}}).model.layout.chunk_size == 3
    with pytest.raises(
        ConfigError,
        match=rf"model\.layout\.chunk_size=2: the adapter in {tmp_path} was trained with "
        r"model\.layout\.chunk_size=3",
    ):
        load_train_config(tmp_path, {"model": {"layout": {"chunk_size": 2}}})


def test_run_config_with_the_head_in_the_layout_loads(tmp_path):
    """Runs saved while the head was `model.layout.head` load with it as `model.action_head`, locked."""
    from vla.config import ConfigError, TrainConfig
    from vla.training.runs import load_train_config

    saved = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(TrainConfig(run_dir=str(tmp_path)))))
    del saved.model["action_head"]
    saved.model.layout.head = "l1"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert load_train_config(tmp_path).model.action_head == "l1"
    with pytest.raises(
        ConfigError, match=r"model\.action_head='tokens': the adapter .* model\.action_head='l1'"
    ):
        load_train_config(tmp_path, {"model": {"action_head": "tokens"}})


def test_datamodule_refuses_a_model_of_another_layout(tmp_path):
    """The samples follow `model.layout`; a model built for another layout (or another centre crop) fails
    at setup naming the keys, one built by build_base_model for this config is taken."""
    from data_factories import make_isaac_dataset

    from vla.config import (
        AugmentConfig,
        ConfigError,
        DataConfig,
        LayoutConfig,
        ModelConfig,
        QuantizationConfig,
        TinyArchitecture,
    )
    from vla.data.datamodule import VLADataModule
    from vla.training.build import build_base_model

    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=6)
    layout = LayoutConfig(chunk_size=2, parallel_decoding=True)
    cfg = DataConfig(format="isaac", root=str(tmp_path / "data"), cache_images=False)
    module = VLADataModule(cfg, cache_dir=tmp_path / "cache", augment=AugmentConfig(), layout=layout)
    stats = module.prepare()
    model_cfg = ModelConfig(architecture=TinyArchitecture(image_size=SIZE), layout=layout)
    model = build_base_model(model_cfg, QuantizationConfig(), stats)
    assert model.layout == ActionLayout.of(model_cfg) and model.layout.constrain_decoding is True
    module.attach(model)
    module.setup("fit")
    assert module.train_set.chunk_size == 2

    for other in (ActionLayout(chunk_size=1), ActionLayout(chunk_size=2, center_crop_scale=0.9)):
        model.set_layout(other)
        with pytest.raises(ConfigError, match=r"model\.layout\.chunk_size=2, model\.layout\.grounding=0"):
            module.setup("fit")


def test_a_run_config_written_before_the_restructure_loads(tmp_path):
    """tests/fixtures/run_config_96dffab.yaml is the config.yaml `python train.py` wrote at commit
    96dffab (the layout keys in data/model, and paths.root_dir / experiment, since removed)."""
    import shutil

    from vla.training.runs import load_train_config

    shutil.copy(Path(__file__).parent / "fixtures" / "run_config_96dffab.yaml", tmp_path / "config.yaml")
    cfg = load_train_config(tmp_path)
    assert (cfg.model.layout.chunk_size, cfg.model.layout.grounding) == (1, 0)
    assert cfg.model.layout.parallel_decoding is False and cfg.model.layout.constrain_decoding is True
    assert cfg.lora.name == "humanoid_default" and cfg.data.dataset_key == "athena_sim"
