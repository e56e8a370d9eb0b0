"""bitsandbytes quantization of the frozen language model (QLoRA's base), and its exact inverse for merging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from vla.model.modeling import OpenVLA


def quantize_language_model(
    model: OpenVLA, method: Literal["nf4", "int8"], compute_dtype: torch.dtype
) -> None:
    """Replace the LLM's decoder linear layers with bitsandbytes ones (NF4 with double quantization,
    or LLM.int8). The vision towers, projector, embeddings and lm_head stay in full precision, as in
    transformers' own bitsandbytes integration."""
    import bitsandbytes as bnb

    decoder = model.language_model.model
    for name, module in list(decoder.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        parent = decoder.get_submodule(name.rsplit(".", 1)[0])
        weight = module.weight.data
        if method == "nf4":
            new = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
            )
            new.weight = bnb.nn.Params4bit(
                weight.float(), requires_grad=False, compress_statistics=True, quant_type="nf4"
            )
            # bitsandbytes' packed CPU inference kernel asserts out_features % 32 == 0 and needs
            # in_features % 64 == 0 (its block size); other sizes (the reference's 172) take the
            # generic path.
            if module.out_features % 32 or module.in_features % 64:
                new.support_avx512bf16_for_cpu = False
        else:
            new = bnb.nn.Linear8bitLt(
                module.in_features, module.out_features, bias=module.bias is not None, has_fp16_weights=False
            )
            new.weight = bnb.nn.Int8Params(weight.float(), requires_grad=False, has_fp16_weights=False)
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.data, requires_grad=False)
        setattr(parent, name.rsplit(".", 1)[1], new.to(weight.device))
    # PEFT reads these to pick its bitsandbytes LoRA layers.
    model.is_loaded_in_4bit = method == "nf4"
    model.is_loaded_in_8bit = method == "int8"
    model.quantization = method


def dequantize_language_model(model: OpenVLA) -> None:
    """Undo `quantize_language_model`: each bitsandbytes layer becomes an nn.Linear holding exactly the
    weights the quantized layer computes with (NF4 codes x block scales, or int8 rows x row scales),
    in the dtype its matmuls ran in (the compute dtype for NF4)."""
    import bitsandbytes as bnb

    decoder = model.language_model.model
    for name, module in list(decoder.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dtype = module.compute_dtype or torch.float32
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight = module.weight.CB.float() * module.weight.SCB.float()[:, None] / 127
            dtype = module.bias.dtype if module.bias is not None else torch.float32
        else:
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        if module.bias is not None:
            linear.bias = nn.Parameter(module.bias.data.to(dtype), requires_grad=False)
        parent, child = name.rsplit(".", 1)
        setattr(decoder.get_submodule(parent), child, linear)
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    model.quantization = None
