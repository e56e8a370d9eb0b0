"""Build the model to fine-tune and apply the adapter: one code path for LoRA, DoRA, QLoRA and full.

QLoRA is a LoRA choice with `quantization=nf4` (bitsandbytes NF4, double quantization, compute dtype
of the frozen base); DoRA is `lora.use_dora`. Bad combinations fail before any weight is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from vla.config import ConfigError, LoraConfig, ModelConfig, QuantizationConfig
from vla.model.checkpoint import DTYPES, quantize_language_model, resolve_checkpoint
from vla.model.configuration import OpenVLAConfig
from vla.model.modeling import OpenVLA
from vla.model.processing import ImageTransform
from vla.model.tiny import build_tiny_model, tiny_config

log = logging.getLogger(__name__)


def record_training_layout(
    model: OpenVLA,
    chunk_size: int,
    center_crop_scale: float,
    grounding: int = 0,
    parallel_decoding: bool = False,
) -> None:
    """Store in config.json what prediction must match: K-step action chunks (`predict_action`
    returns [B, K, D] when K > 1), the grounding tokens written before them (`data.grounding`), whether
    the chunk is decoded in one pass (`model.parallel_decoding`), and the centre crop that mirrors a
    random-crop augmentation (applied by the processor, so predict(), the sim evaluation and saved
    models all use it)."""
    model.config.extra["action_chunk_size"] = chunk_size
    model.config.extra["grounding_tokens"] = grounding
    model.config.extra["parallel_decoding"] = parallel_decoding
    model.config.extra["center_crop_scale"] = center_crop_scale
    model.processor.image_transform.center_crop_scale = center_crop_scale


def build_base_model(
    model_cfg: ModelConfig,
    quant: QuantizationConfig,
    norm_stats: dict[str, Any],
    chunk_size: int = 1,
    center_crop_scale: float = 1.0,
    grounding: int = 0,
) -> OpenVLA:
    """The frozen base: a pretrained OpenVLA (its statistics replaced by the fine-tune's) or a new
    tiny one, optionally with a bitsandbytes-quantized language model. `chunk_size` (data.chunk_size),
    `center_crop_scale` (augment.crop_scale), `grounding` (data.grounding) and
    `model_cfg.parallel_decoding` are recorded in its config (`record_training_layout`)."""
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
    model.config.extra["constrain_action_decoding"] = model_cfg.constrain_action_decoding
    record_training_layout(model, chunk_size, center_crop_scale, grounding, model_cfg.parallel_decoding)
    return model


def base_image_transform(model_cfg: ModelConfig, center_crop_scale: float = 1.0) -> ImageTransform:
    """The image preprocessing of the model `build_base_model` builds, without building it (for
    `scripts/inspect_data.py`): the pretrained checkpoint's config.json, or the tiny architecture."""
    if model_cfg.pretrained:
        folder = resolve_checkpoint(model_cfg.pretrained)
        transform = ImageTransform.from_config(OpenVLAConfig.from_json_file(folder / "config.json"), folder)
    else:
        # The vocabulary size shapes only the language model's part of the config.
        transform = ImageTransform.from_config(tiny_config(model_cfg.architecture, vocab_size=0))
    transform.center_crop_scale = center_crop_scale  # as record_training_layout
    return transform


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every LoRA target must name a module; PEFT's own error does not list the choices."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in names]
    if missing:
        llm = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.language_model.named_modules()
                if isinstance(m, nn.Linear)
            }
        )
        raise ConfigError(
            f"lora.target_modules {missing} match no module of the model; "
            f"the language model's linear layers are {llm} (plus embed_tokens)"
        )


def apply_adapter(model: OpenVLA, lora: LoraConfig, gradient_checkpointing: bool = False) -> nn.Module:
    """Make the model trainable as `lora` asks; returns the PEFT model (or the model itself for full)."""
    quantized = bool(getattr(model, "quantization", None))
    if gradient_checkpointing and not quantized:
        model.gradient_checkpointing_enable()  # (PEFT's k-bit preparation does it for quantized bases)
    if lora.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    check_targets(model, lora.target_modules)
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_dora=lora.use_dora,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "adapter %s: %d trainable of %d parameters (%.2f%%)",
        lora.name,
        trainable,
        total,
        100 * trainable / total,
    )
    return peft_model


def unwrap(model: nn.Module) -> OpenVLA:
    """The OpenVLA inside a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None)
    return inner if isinstance(inner, OpenVLA) else model
