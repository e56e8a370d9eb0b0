"""Apply the adapter to the base model: one code path for LoRA, DoRA, QLoRA and full fine-tuning.

QLoRA is a LoRA choice with `quantization=nf4` (bitsandbytes NF4, double quantization, compute dtype
of the frozen base); DoRA is `lora.use_dora`. Bad combinations fail before any weight is loaded.
"""

from __future__ import annotations

import logging

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from vla.config import ConfigError, LoraConfig
from vla.model.modeling import OpenVLA

log = logging.getLogger(__name__)
EXTRA_MODULES = ("action_head", "proprio_projector")  # OpenVLA.set_layout's modules (vla.model.projectors)


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
    # A continuous head reads the final hidden states: the language-model head is never run, so it is
    # not trained (an unused trainable weight also stops DDP, which expects a gradient for each).
    unused = {"lm_head"} if model.layout.continuous else set()
    if lora.kind == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[1] not in unused if name.startswith("language_model.") else True)
        return model
    targets = [t for t in lora.target_modules if t not in unused]
    if len(targets) < len(lora.target_modules):
        log.info("lora.target_modules: lm_head left out (the %s head does not use it)", model.layout.head)
    if not targets:
        raise ConfigError(f"lora.target_modules {lora.target_modules}: nothing left to adapt but lm_head")
    check_targets(model, targets)
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    # A continuous head and a state projector are new modules: trained in full beside the adapter,
    # saved with it and merged by export (PEFT's modules_to_save).
    extra = [name for name in EXTRA_MODULES if getattr(model, name, None) is not None]
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.use_dora,
        bias="none",
        modules_to_save=extra or None,
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
