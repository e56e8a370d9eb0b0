"""Apply the adapter to the base model: one code path for LoRA, DoRA, QLoRA and full fine-tuning.

QLoRA is a LoRA choice with `quantization=nf4` (bitsandbytes NF4, double quantization, compute dtype
of the frozen base); DoRA is `lora.use_dora`. Bad combinations fail before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from vla.config import ConfigError, LoraConfig
from vla.model.modeling import OpenVLA
from vla.model.projectors import MODULES

log = logging.getLogger(__name__)
EXTRA_MODULES = MODULES  # OpenVLA.set_layout's modules (vla.model.projectors)

# The keys PEFT 0.10.0 and 0.11.1 (OpenVLA's pin) accept in adapter_config.json: the fields of their
# PeftConfig and LoraConfig dataclasses, the same in both. They pass every key to LoraConfig(**keys), so
# one they do not know fails the load ("unexpected keyword argument 'alora_invocation_tokens'").
OLD_PEFT_LORA_KEYS = frozenset(
    {
        *("base_model_name_or_path", "revision", "peft_type", "task_type", "inference_mode"),
        *("auto_mapping", "r", "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out"),
        *("bias", "use_rslora", "modules_to_save", "init_lora_weights", "layers_to_transform"),
        *("layers_pattern", "rank_pattern", "alpha_pattern", "megatron_config", "megatron_core"),
        *("loftq_config", "use_dora", "layer_replication"),
    }
)
METADATA_KEYS = ("peft_version",)  # which PEFT wrote the file; no setting


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


def under_modules(name: str, modules: list[str]) -> bool:
    """Whether the parameter `name` lies under one of `modules` (paths in the OpenVLA model; any
    prefix before them, a PEFT wrapper's `base_model.model.` or a LightningModule's `model.`, is
    allowed for)."""
    return any(f".{module}." in f".{name}" for module in modules)


def freeze_modules(model: nn.Module, modules: list[str]) -> None:
    """Stop training the parameters under `modules`."""
    for name, p in model.named_parameters():
        if under_modules(name, modules):
            p.requires_grad_(False)


def apply_adapter(model: OpenVLA, lora: LoraConfig, gradient_checkpointing: bool = False) -> nn.Module:
    """Make the model trainable as `lora` asks; returns the PEFT model (or the model itself for full)."""
    quantized = bool(getattr(model, "quantization", None))
    if gradient_checkpointing and not quantized:
        model.gradient_checkpointing_enable()  # (PEFT's k-bit preparation does it for quantized bases)
    # What the forward never runs (the towers' last block, norm and pool head; the language-model head
    # under a continuous head) is not trained: it would get no gradient, and an unused trainable weight
    # stops DDP, which expects a gradient for each.
    unused_modules = model.unused_modules
    unused = {"lm_head"} if "language_model.lm_head" in unused_modules else set()
    if lora.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_modules(model, unused_modules)
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
    freeze_modules(peft_model, unused_modules)  # an adapter target inside them (e.g. fc1) stays unused
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


def _field_defaults() -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(PeftLoraConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def make_adapter_config_portable(folder: str | Path) -> list[str]:
    """Rewrite `folder`/adapter_config.json for PEFT from 0.10 on: keys older versions do not know are
    left out where they hold this PEFT's default (a missing key reads as its default, so nothing
    changes here). Returns the unknown keys kept because they hold another value (PEFT < 0.12 cannot
    load such an adapter; none of this project's lora= choices sets one)."""
    path = Path(folder) / "adapter_config.json"
    raw = json.loads(path.read_text())
    defaults = _field_defaults()
    kept = []
    for key in sorted(set(raw) - OLD_PEFT_LORA_KEYS):
        if key in METADATA_KEYS or (key in defaults and _same(raw[key], defaults[key])):
            del raw[key]
        else:
            kept.append(key)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    if kept:
        log.warning("%s: %s are not at their defaults; PEFT before 0.12 cannot load this adapter", path, kept)
    return kept


def _same(saved: object, default: object) -> bool:
    """A JSON value equals a dataclass default (JSON has lists where dataclasses have tuples or sets)."""
    if isinstance(default, tuple | set | frozenset):
        default = sorted(default) if isinstance(default, set | frozenset) else list(default)
    return saved == default


def unwrap(model: nn.Module) -> OpenVLA:
    """The OpenVLA inside a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None)
    return inner if isinstance(inner, OpenVLA) else model
