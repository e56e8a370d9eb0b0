"""The embedded default: a tiny model of OpenVLA's exact architecture that trains on 2 CPU cores.

Same fused DINOv2 + SigLIP towers (register tokens, LayerScale, attention-pool head), the same
3-layer projector and a Llama decoder, only smaller, with the compact Llama-layout tokenizer that
ships in `vla/model/assets/tokenizer` (built by `scripts/build_tokenizer.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from vla.config.model import ACTION_TOKEN_INITS, TinyArchitecture
from vla.model.configuration import OpenVLAConfig
from vla.model.modeling import OpenVLA
from vla.model.processing import ImageTransform, OpenVLAProcessor
from vla.model.source_files import read_source_files
from vla.model.vision import LayerScale, VisionTransformer

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
DINO_ID = "athena_tiny_patch14_reg4_dinov2"
SIGLIP_ID = "athena_tiny_patch14_siglip"


def tiny_config(
    arch: TinyArchitecture, vocab_size: int, norm_stats: dict[str, Any] | None = None
) -> OpenVLAConfig:
    """OpenVLA `config.json` fields for the tiny model; `vocab_size` is the tokenizer's base vocabulary."""
    pad_to = 64
    return OpenVLAConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size + pad_to,  # base vocab + <PAD>, padded to a multiple of 64
            "hidden_size": arch.llm_dim,
            "intermediate_size": arch.llm_intermediate,
            "num_hidden_layers": arch.llm_layers,
            "num_attention_heads": arch.llm_heads,
            "num_key_value_heads": arch.llm_heads,
            "max_position_embeddings": 2048,
            "pad_token_id": vocab_size,
        },
        timm_model_ids=[DINO_ID, SIGLIP_ID],
        image_sizes=[arch.image_size, arch.image_size],
        timm_model_specs={
            DINO_ID: {
                "patch_size": 14,
                "embed_dim": arch.dino_dim,
                "depth": arch.vision_depth,
                "num_heads": arch.dino_heads,
                "mlp_ratio": 4.0,
                "reg_tokens": 4,
                "class_token": True,
                "no_embed_class": True,
                "layer_scale": True,
                "global_pool": "token",
            },
            SIGLIP_ID: {
                "patch_size": 14,
                "embed_dim": arch.siglip_dim,
                "depth": arch.vision_depth,
                "num_heads": arch.siglip_heads,
                "mlp_ratio": 3.7362,
                "reg_tokens": 0,
                "class_token": False,
                "no_embed_class": False,
                "layer_scale": False,
                "global_pool": "map",
            },
        },
        pad_to_multiple_of=pad_to,
        pad_token_id=vocab_size,
        norm_stats=norm_stats,
        extra={"llm_backbone_id": "athena-tiny-llama", "vision_backbone_id": "athena-tiny-dinosiglip"},
    )


def _init_vision(module: nn.Module) -> None:
    # timm's ViT init: truncated-normal linear weights, zero biases, small position/prefix tokens.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, VisionTransformer):
            nn.init.trunc_normal_(m.pos_embed, std=0.02)
            for token in (m.cls_token, m.reg_token):
                if token is not None:
                    nn.init.normal_(token, std=1e-6)
        elif isinstance(m, LayerScale):
            nn.init.constant_(m.scale_factor, 1e-5)


def ordinal_code(n_bins: int, dim: int) -> torch.Tensor:
    """[n_bins, dim] unit vectors in which neighbouring bins are alike: cosines and sines of the bin
    index at dim/2 evenly spaced frequencies, the highest making dim/8 turns across the bins. The dot
    product of two codes falls from 1 to ~0 over about 4 * n_bins / dim bins (16 of 256 at dim 128)."""
    half = dim // 2
    index = torch.arange(n_bins, dtype=torch.float64)[:, None]
    freqs = torch.arange(1, half + 1, dtype=torch.float64)[None] * math.pi / (4 * n_bins)
    code = torch.cat([torch.cos(index * freqs), torch.sin(index * freqs)], dim=1)
    code = torch.nn.functional.pad(code, (0, dim - 2 * half))
    return (code / code.norm(dim=1, keepdim=True)).float()


def init_action_tokens_ordinal(model: OpenVLA) -> None:
    """Give the 256 action tokens' input embeddings and output rows (lm_head) an ordinal code.

    With random rows a new model's action tokens are 256 unrelated classes: cross-entropy rewards
    only the exact bin, and the tiny model learns the bins' marginal but not how they depend on the
    image (on generated reach scenes, 1000 steps left the loss of ball-coordinate tokens at a uniform
    guess). With neighbouring bins alike, a hidden state that moves a little moves the predicted bin
    a little, and the same scenes are read to R^2 0.67-0.98 in 1000 steps. Row norms are kept."""
    lm = model.language_model
    tok = model.action_tokenizer
    rows = slice(tok.first_action_token, tok.last_action_token + 1)
    # Bin i is token vocab_size - 1 - i: the rows run from the highest bin to the lowest.
    code = ordinal_code(tok.n_bins, lm.config.hidden_size).flip(0)
    with torch.no_grad():
        for weight in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
            weight[rows] = code.to(weight) * weight[rows].norm(dim=1).mean()


def build_tiny_model(
    arch: TinyArchitecture | None = None,
    norm_stats: dict[str, Any] | None = None,
    seed: int = 0,
    action_token_init: str = "ordinal",
) -> OpenVLA:
    """A randomly initialised tiny OpenVLA with its processor attached; `action_token_init="ordinal"`
    codes the action tokens' embeddings by bin (`init_action_tokens_ordinal`), "random" leaves them
    as the rest of the vocabulary."""
    if action_token_init not in ACTION_TOKEN_INITS:
        raise ValueError(f"action_token_init={action_token_init!r}; choose one of {list(ACTION_TOKEN_INITS)}")
    arch = arch or TinyArchitecture()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    base_vocab = int(tokenizer.pad_token_id)  # <PAD> is appended right after the base vocabulary
    config = tiny_config(arch, base_vocab, norm_stats)
    torch.manual_seed(seed)
    model = OpenVLA(config)
    _init_vision(model.vision_backbone)
    if action_token_init == "ordinal":
        init_action_tokens_ordinal(model)
    processor = OpenVLAProcessor(
        tokenizer, ImageTransform.from_config(config), read_source_files(TOKENIZER_DIR)
    )
    model.attach_processor(processor)
    return model
