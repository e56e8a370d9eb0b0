"""The typed schema behind every YAML file in `conf/`.

Each entry point's config is a dataclass registered in Hydra's ConfigStore; the YAML files list it
first in their defaults, so an unknown or mistyped key fails at start-up with its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


@dataclass
class PredictConfig:
    """`scripts/predict.py`: one action for one image and instruction."""

    checkpoint: str = "???"  # checkpoint folder (OpenVLA format) or hub id
    image: str = "???"  # RGB image file (PNG/JPEG, any size: resized like OpenVLA)
    instruction: str = "???"  # natural-language task, lower-cased into OpenVLA's prompt
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    constrain: bool | None = None  # decode only action tokens (default: the checkpoint's setting)
    dtype: str | None = None  # float32 | bfloat16 | float16 (default: as stored)
    quantization: str | None = None  # nf4 | int8 (bitsandbytes, language model only)
    use_cache: bool = True  # KV cache during decoding


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="predict_schema", node=PredictConfig)


def to_object(cfg: DictConfig, cls: type):
    """Composed config -> dataclass instance (validates types and required values)."""
    merged = OmegaConf.merge(OmegaConf.structured(cls), cfg)
    return OmegaConf.to_object(merged)
