"""OpenVLA configuration, read from and written to OpenVLA's own `config.json`.

The vision towers are named by timm model ids in `timm_model_ids`. We do not use timm: known ids map
to an architecture through `KNOWN_TOWERS`, and any other id must be described in the checkpoint's
`timm_model_specs` entry (the tiny reference checkpoint does this).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class CheckpointError(ValueError):
    """A checkpoint folder or config that cannot be loaded; the message names the file and key."""


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of one timm VisionTransformer tower, as timm 0.9.10 builds it."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    reg_tokens: int = 0
    class_token: bool = True
    # DINOv2 (no_embed_class=True): pos_embed covers only the patches and is added before the
    # cls/register tokens are prepended.
    no_embed_class: bool = False
    layer_scale: bool = False
    # "map" keeps SigLIP's attention-pool head (in the state dict, unused by OpenVLA).
    global_pool: str = "token"
    act_layer: str = "gelu"
    image_mean: tuple[float, float, float] = IMAGENET_MEAN_STD[0]
    image_std: tuple[float, float, float] = IMAGENET_MEAN_STD[1]

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def mlp_hidden(self) -> int:
        # timm: int(dim * mlp_ratio); SigLIP-so400m's 3.7362 gives 4304 for 1152.
        return int(self.embed_dim * self.mlp_ratio)


_DINOV2 = dict(patch_size=14, reg_tokens=4, class_token=True, no_embed_class=True, layer_scale=True)
_SIGLIP = dict(
    patch_size=14,
    mlp_ratio=3.7362,
    class_token=False,
    global_pool="map",
    image_mean=SIGLIP_MEAN_STD[0],
    image_std=SIGLIP_MEAN_STD[1],
)

# The towers of OpenVLA's fused (dinosiglip) backbone and of its single-tower variants.
KNOWN_TOWERS: dict[str, ViTSpec] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTSpec(embed_dim=1024, depth=24, num_heads=16, **_DINOV2),
    "vit_base_patch14_reg4_dinov2.lvd142m": ViTSpec(embed_dim=768, depth=12, num_heads=12, **_DINOV2),
    "vit_small_patch14_reg4_dinov2.lvd142m": ViTSpec(embed_dim=384, depth=12, num_heads=6, **_DINOV2),
    "vit_so400m_patch14_siglip_224": ViTSpec(embed_dim=1152, depth=27, num_heads=16, **_SIGLIP),
    "vit_so400m_patch14_siglip_384": ViTSpec(embed_dim=1152, depth=27, num_heads=16, **_SIGLIP),
}


def tower_spec(model_id: str, specs: dict[str, dict[str, Any]], act_override: str | None) -> ViTSpec:
    """The architecture of `model_id`: from `timm_model_specs` if given there, else the known table."""
    if model_id in specs:
        entry = dict(specs[model_id])
        unknown = set(entry) - {f.name for f in dataclasses.fields(ViTSpec)}
        if unknown:
            raise CheckpointError(f"timm_model_specs[{model_id!r}] has unknown keys {sorted(unknown)}")
        for key in ("image_mean", "image_std"):
            if key in entry:
                entry[key] = tuple(entry[key])
        if not entry.get("class_token", True) or entry.get("global_pool") == "map":
            entry.setdefault("image_mean", SIGLIP_MEAN_STD[0])
            entry.setdefault("image_std", SIGLIP_MEAN_STD[1])
        spec = ViTSpec(**entry)
    elif model_id in KNOWN_TOWERS:
        spec = KNOWN_TOWERS[model_id]
    else:
        raise CheckpointError(
            f"unknown vision tower {model_id!r}: known ids are {sorted(KNOWN_TOWERS)}; describe any other "
            "id in config.json under 'timm_model_specs'"
        )
    if act_override is not None:
        if act_override not in ("gelu", "quick_gelu"):
            raise CheckpointError(f"timm_override_act_layers: unsupported activation {act_override!r}")
        spec = dataclasses.replace(spec, act_layer=act_override)
    return spec


# Architecture fields of the Llama text config that we pass on; everything else in OpenVLA's
# text_config (generation defaults of transformers 4.40) is ignored.
_LLAMA_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "mlp_bias",
    "pretraining_tp",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
)


@dataclass
class OpenVLAConfig:
    """The fields of OpenVLA's `config.json` that define the model; other keys are kept verbatim."""

    text_config: dict[str, Any]
    timm_model_ids: list[str]
    image_sizes: list[int]
    use_fused_vision_backbone: bool = True
    timm_override_act_layers: list[str | None] = dataclasses.field(default_factory=lambda: [None, None])
    timm_model_specs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    image_resize_strategy: str = "resize-naive"
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    pad_token_id: int = 32000
    norm_stats: dict[str, Any] | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n_towers = 2 if self.use_fused_vision_backbone else 1
        if len(self.timm_model_ids) != n_towers:
            raise CheckpointError(
                f"timm_model_ids has {len(self.timm_model_ids)} ids; "
                f"use_fused_vision_backbone={self.use_fused_vision_backbone} needs {n_towers}"
            )
        if self.image_resize_strategy != "resize-naive":
            raise CheckpointError(
                f"image_resize_strategy {self.image_resize_strategy!r} is not supported (only 'resize-naive', "
                "which every released OpenVLA checkpoint uses)"
            )
        if len(set(self.image_sizes)) != 1:
            raise CheckpointError(f"image_sizes must be square, got {self.image_sizes}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.image_sizes[0])

    @property
    def towers(self) -> list[ViTSpec]:
        overrides = list(self.timm_override_act_layers) + [None] * len(self.timm_model_ids)
        return [
            tower_spec(mid, self.timm_model_specs, overrides[i]) for i, mid in enumerate(self.timm_model_ids)
        ]

    @property
    def llama_config(self) -> LlamaConfig:
        kwargs = {k: self.text_config[k] for k in _LLAMA_KEYS if k in self.text_config}
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        return LlamaConfig(**kwargs)

    @property
    def vocab_size(self) -> int:
        """The action tokenizer's vocabulary: OpenVLA pads the embedding to a multiple of 64, and
        the action bins are the last 256 ids *before* that padding (32064 - 64 = 32000 for Llama-2)."""
        return int(self.llama_config.vocab_size) - self.pad_to_multiple_of

    # -- (de)serialization ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> OpenVLAConfig:
        raw = copy.deepcopy(raw)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key in ("text_config", "timm_model_ids", "image_sizes"):
            if key not in raw:
                raise CheckpointError(f"{source}: missing required key {key!r}")
        kwargs = {k: raw.pop(k) for k in list(raw) if k in names}
        if kwargs.get("timm_model_specs") is None:
            kwargs.pop("timm_model_specs", None)
        try:
            return cls(**kwargs, extra=raw)
        except CheckpointError as err:
            raise CheckpointError(f"{source}: {err}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> OpenVLAConfig:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.setdefault("model_type", "openvla")
        out.setdefault("architectures", ["OpenVLAForActionPrediction"])
        for f in dataclasses.fields(self):
            if f.name == "extra" or (f.name == "timm_model_specs" and not self.timm_model_specs):
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        return dict(sorted(out.items()))
