"""A separate virtual environment with OpenVLA's pinned versions, for tests that load the project's
artefacts with OpenVLA's own Hugging Face code (../shared/openvla_hf, never part of the product).

Built once (minutes: pip installs from the local wheel cache and the registries) and reused while
`.complete` in it lists the same pins. `python tests/openvla_env.py` builds it ahead of the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OPENVLA_HF = Path(__file__).resolve().parents[2] / "shared" / "openvla_hf"
ENV_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "athena-vla" / "openvla-env"

# ../shared/openvla_hf/README.md: OpenVLA's pins, on the local CPU torch.
TORCH = "torch==2.13.0"
PACKAGES = [
    "transformers==4.40.1",
    "tokenizers==0.19.1",
    "numpy<2",
    "pillow",
    "safetensors",
    "huggingface_hub==0.23.0",
    "pyyaml",
    "peft==0.11.1",  # OpenVLA's pin for its LoRA fine-tunes
]
# timm's and torchvision's dependencies would pull a CUDA torch: installed without them.
NO_DEPS = ["timm==0.9.10", "torchvision==0.28.0"]


def openvla_python() -> Path:
    """The environment's python, built when missing or made with other pins."""
    python = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / ".complete"
    pins = "\n".join([TORCH, *PACKAGES, *NO_DEPS])
    if marker.is_file() and marker.read_text() == pins and python.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run([*pip, "-c", str(constraints), *PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True)
    marker.write_text(pins)
    return python


if __name__ == "__main__":
    print(openvla_python())
