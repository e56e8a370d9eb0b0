"""Shared fixtures: Hydra composition of the shipped configs (`compose_config`, fixture `compose`), and
the OpenVLA reference material beside the checkout, loaded once per session."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from vla.sim import select_gl_backend  # noqa: E402

select_gl_backend()  # the tests import the simulator (and so mujoco) directly

CONF = ROOT / "conf"
REF = ROOT.parent / "shared" / "openvla_ref"


def compose_config(
    config_name: str,
    overrides: Sequence[str] = (),
    schema: type | None = None,
    return_hydra_config: bool = False,
) -> Any:
    """`conf/<config_name>.yaml` composed with `overrides` as on the command line: the DictConfig, or with
    `schema` the typed object (`vla.config.to_object`, which runs the dataclasses' checks).

    Hydra's global state is cleared before and after, so calls are independent of each other and of
    the test order. Fields set to `${hydra:runtime.output_dir}` (train's and inspect_data's `run_dir`,
    export's `out_dir`) resolve only inside a Hydra app: give them on the command line (`run_dir=DIR`),
    or pass `return_hydra_config=True` with `hydra.runtime.output_dir=DIR` among the overrides. Then the
    config keeps its `hydra` node, and with `schema` Hydra's runtime config is set while it is converted,
    as in the app (and restored after)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from vla.config import register_configs, to_object

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
    if schema is None:
        return cfg
    if not return_hydra_config:
        return to_object(cfg, schema)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        # The hydra node itself holds interpolations only a running app fills (hydra.job.num).
        return to_object(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), schema)
    finally:
        hydra_config.cfg = previous


@pytest.fixture
def compose():
    """`compose_config`, for tests that take their helpers as fixtures."""
    return compose_config


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are entry points, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    if not (REF / "tiny_ckpt" / "config.json").is_file():
        pytest.skip(f"reference material not found at {REF}")
    return REF


@pytest.fixture(scope="session")
def ref_cases(ref_dir: Path) -> list[dict]:
    return json.loads((ref_dir / "cases_public.json").read_text())["cases"]


@pytest.fixture(scope="session")
def ref_model(ref_dir: Path):
    from vla.model.modeling import OpenVLA

    return OpenVLA.from_pretrained(ref_dir / "tiny_ckpt")


# Training runs in tests: two steps of batch 2 at 56 px, one validation batch, nothing logged.
FAST_TRAIN = [
    "logger=none",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "model.architecture.image_size=56",
]
# Simulator data for such runs: one family (raise_arm), three demos, 56 px frames; raise_arm scenes give
# no grounding values, so the default's 8 (data=sample's reach scenes) are off.
SMALL_SAMPLE = [
    "data.sample.tasks=[raise_arm]",
    "data.grounding_values=0",
    "data.sample.episodes_per_task=3",
    "data.sample.task_episodes={}",
    "data.sample.image_size=56",
    "data.sample.workers=1",
]

# OpenVLA's own layout and the adapter the project's LoRA tests are written for: the default recipe trains
# the continuous head with the robot state, FiLM, data=sample's grounding values and every weight
# (conf/model/openvla_tiny.yaml, conf/train.yaml); tests of token decoding, LoRA / QLoRA and the
# token-head export add these to their overrides.
OPENVLA_LAYOUT = [
    "model.action_head=tokens",
    "model.proprio=false",
    "model.film=false",
    "model.layout.grounding=0",
    "model.layout.chunk_size=1",
    "lora=humanoid_default",
    "optim.action_loss=l1",
]
