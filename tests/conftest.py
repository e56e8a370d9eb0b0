"""Shared fixtures: the OpenVLA reference material beside the checkout, loaded once per session."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from vla.sim import select_gl_backend  # noqa: E402

select_gl_backend()  # the tests import the simulator (and so mujoco) directly

REF = ROOT.parent / "shared" / "openvla_ref"


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
