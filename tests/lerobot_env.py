"""A separate virtual environment with LeRobot's own dataset code, for the tests that check that LeRobot
reads what `vla.data.lerobot_writer` writes and that `vla.data.lerobot` reads what LeRobot writes
(tests/test_data_lerobot.py; never part of the product: LeRobot needs torch and torchvision, and
torchvision must not go into .venv).

LeRobot 0.4.4 is the newest release for Python 3.11 and writes codebase v3.0. It is installed without
its dependencies, plus the few its dataset code imports, on the local CPU torch. The registry's
torchvision cannot load its extension on that torch, so the tests put tests/lerobot_compat/ (a
stand-in for the two torchvision pieces LeRobot's datasets use) first on PYTHONPATH. Built once
(minutes) and reused while `.complete` lists the same pins. `python tests/lerobot_env.py` builds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "athena-vla" / "lerobot-env"
COMPAT = Path(__file__).resolve().parent / "lerobot_compat"
TORCH = "torch==2.13.0"
NO_DEPS = ["lerobot==0.4.4"]
PACKAGES = ["datasets", "pandas", "pyarrow", "av", "huggingface_hub", "draccus", "jsonlines", "packaging",
            "einops", "imageio", "termcolor", "deepdiff", "pillow", "numpy", "accelerate"]  # fmt: skip


def lerobot_python() -> Path:
    """The environment's python, built when missing or made with other pins."""
    python = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / ".complete"
    pins = "\n".join([TORCH, *NO_DEPS, *PACKAGES])
    if marker.is_file() and marker.read_text() == pins and python.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True)
    subprocess.run([*pip, "-c", str(constraints), *PACKAGES], check=True)
    marker.write_text(pins)
    return python


def run_lerobot(script: str, *args: str) -> str:
    """Run tests/lerobot_compat/<script> in the environment; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(COMPAT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(lerobot_python()), str(COMPAT / script), *args],
        env=env, capture_output=True, text=True, timeout=600, cwd=COMPAT,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return done.stdout


if __name__ == "__main__":
    print(lerobot_python())
