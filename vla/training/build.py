"""Build the base model to fine-tune: a pretrained OpenVLA or a new tiny one, with the action layout
it is trained for recorded in its config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerFast

from vla.config import ActionLayout, ModelConfig, QuantizationConfig
from vla.model.checkpoint import DTYPES, resolve_checkpoint
from vla.model.configuration import OpenVLAConfig
from vla.model.modeling import OpenVLA
from vla.model.processing import ImageTransform, OpenVLAProcessor, build_prompt
from vla.model.quantize import quantize_language_model
from vla.model.tiny import TOKENIZER_DIR, build_tiny_model, tiny_config


def build_base_model(
    model_cfg: ModelConfig,
    quant: QuantizationConfig,
    norm_stats: dict[str, Any],
    center_crop_scale: float = 1.0,
) -> OpenVLA:
    """The frozen base: a pretrained OpenVLA (its statistics replaced by the fine-tune's) or a new
    tiny one, optionally with a bitsandbytes-quantized language model. Its config.json records the
    action layout it is trained for (`training_layout`: the head, `model_cfg.layout`, the centre crop
    `center_crop_scale` that mirrors training's random crop, augment.crop_scale, the action and state
    sizes), and it gets the head and state-projector modules the layout needs."""
    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.pretrained:
        model = OpenVLA.from_pretrained(model_cfg.pretrained, dtype=dtype, quantization=quant.method)
        model.config.norm_stats = norm_stats
    else:
        model = build_tiny_model(
            model_cfg.architecture,
            norm_stats=norm_stats,
            seed=model_cfg.init_seed,
            action_token_init=model_cfg.action_token_init,
        )
        model.to(dtype)
        if quant.method:
            quantize_language_model(model, quant.method, compute_dtype=dtype)
    model.set_layout(training_layout(model_cfg, norm_stats, center_crop_scale), seed=model_cfg.init_seed)
    return model


def training_layout(
    model_cfg: ModelConfig, norm_stats: dict[str, Any], center_crop_scale: float
) -> ActionLayout:
    """The layout `model_cfg` trains on the data of `norm_stats` (one statistics key: its action and
    state sizes shape a continuous head and a state projector)."""
    if len(norm_stats) != 1:
        raise ValueError(f"expected the statistics of one dataset key, got {sorted(norm_stats)}")
    entry = next(iter(norm_stats.values()))
    proprio = entry.get("proprio") or {}
    return ActionLayout.of(
        model_cfg, center_crop_scale, len(entry["action"]["q01"]), len(proprio.get("q01", []))
    )


@dataclass
class PromptBudget:
    """What one training sample of the model `build_base_model` builds needs besides its prompt and
    actions (image patches, the state token, grounding tokens, end of sequence), the language model's
    positions, and its tokenizer: `VLADataModule.prepare` checks each episode's instructions with it."""

    tokenizer: Any
    fixed: int
    max_positions: int | None

    def positions(self, instruction: str, n_action_tokens: int) -> int:
        prompt = len(self.tokenizer(build_prompt(instruction))["input_ids"])
        return prompt + self.fixed + n_action_tokens


def prompt_budget(model_cfg: ModelConfig) -> PromptBudget:
    """The `PromptBudget` of the model `model_cfg` describes, without building it (the pretrained
    checkpoint's config.json and tokenizer, or the tiny architecture and tokenizer)."""
    if model_cfg.pretrained:
        folder = resolve_checkpoint(model_cfg.pretrained)
        config = OpenVLAConfig.from_json_file(folder / "config.json")
        tokenizer = OpenVLAProcessor.from_pretrained(folder, config).tokenizer
    else:
        config = tiny_config(model_cfg.architecture, vocab_size=0)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    patches = (config.image_size // config.towers[0].patch_size) ** 2
    fixed = patches + int(model_cfg.proprio) + model_cfg.layout.grounding + 1
    return PromptBudget(tokenizer, fixed, config.text_config.get("max_position_embeddings"))


def base_image_transform(model_cfg: ModelConfig, center_crop_scale: float = 1.0) -> ImageTransform:
    """The image preprocessing of the model `build_base_model` builds, without building it (for
    `scripts/inspect_data.py`): the pretrained checkpoint's config.json, or the tiny architecture."""
    if model_cfg.pretrained:
        folder = resolve_checkpoint(model_cfg.pretrained)
        transform = ImageTransform.from_config(OpenVLAConfig.from_json_file(folder / "config.json"), folder)
    else:
        # The vocabulary size shapes only the language model's part of the config.
        transform = ImageTransform.from_config(tiny_config(model_cfg.architecture, vocab_size=0))
    transform.center_crop_scale = center_crop_scale  # as OpenVLA.set_layout
    return transform
