"""ONNX export of an OpenVLA with a KV cache, and an onnxruntime policy that decodes like PyTorch.

Two graphs keep the per-token cost constant, as transformers' own cached decoding does:

- `prefix.onnx`: (pixel_values [B,C,H,W], input_ids [B,L]) -> logits at the last position [B,V] and
  the key/value cache of every layer (`present.key.<i>`, `present.value.<i>`, [B,heads,S,head_dim]);
  the prompt ids already end with the '▁' token OpenVLA appends before the action tokens.
- `decode.onnx`: (token [B,1], position [B,1], `past.key.<i>`, `past.value.<i>`) -> logits [B,V] and
  the cache grown by one position.

Both are traced with the TorchScript exporter (`dynamo=False`: onnxscript, which the dynamo exporter
needs, is not a dependency) from wrappers that take and return plain cache tensors.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from vla.inference.onnx_policy import DECODE_FILE, INT8_SUFFIX, POLICY_FILE, PREFIX_FILE, cache_names
from vla.model.checkpoint import _atomic_folder, commit_folder
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt

log = logging.getLogger(__name__)


def _flat_cache(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


class PrefixGraph(nn.Module):
    """Image + prompt -> last-position logits and the KV cache (what `generate_action_tokens` runs
    first, for rows of equal length)."""

    def __init__(self, model: OpenVLA):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        lm = self.model.language_model
        patches = self.model.project_image(pixel_values)
        tokens = lm.get_input_embeddings()(input_ids)
        embeds = torch.cat([tokens[:, :1], patches.to(tokens.dtype), tokens[:, 1:]], dim=1)
        out = lm(inputs_embeds=embeds, use_cache=True)
        return (out.logits[:, -1], *_flat_cache(out.past_key_values))


class DecodeGraph(nn.Module):
    """One token at `position` on top of the cache -> its logits and the grown cache."""

    def __init__(self, model: OpenVLA):
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, position: torch.Tensor, *past: torch.Tensor):
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        out = self.model.language_model(
            input_ids=token, position_ids=position, past_key_values=DynamicCache(pairs), use_cache=True
        )
        return (out.logits[:, -1], *_flat_cache(out.past_key_values))


def policy_metadata(model: OpenVLA) -> dict[str, Any]:
    """What the onnxruntime policy needs besides the graphs, the processor and the action layout (those
    come from the exported model folder's config.json)."""
    return {
        "n_layers": model.config.llama_config.num_hidden_layers,
        "empty_token_id": int(model.empty_token_id),
        "eos_token_id": int(model.language_model.config.eos_token_id),
        "action_placeholder_id": model.action_placeholder_id,
    }


def _example_inputs(model: OpenVLA) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.config.image_size
    channels = 3 * len(model.config.towers)
    ids = model.processor.tokenizer(build_prompt("reach the red ball"))["input_ids"]
    ids = torch.tensor([[*ids, model.empty_token_id]])
    return torch.zeros(1, channels, size, size), ids


@torch.no_grad()
def export_onnx(model: OpenVLA, folder: str | Path, opset: int = 17) -> Path:
    """Write `prefix.onnx`, `decode.onnx` and `policy.json` into `folder` (atomically). The model is
    exported in float32 (a copy if it is stored in another dtype)."""
    import warnings

    folder = Path(folder)
    if next(model.parameters()).dtype != torch.float32:
        model = _float32_copy(model)
    names = cache_names(model.config.llama_config.num_hidden_layers)
    pixel_values, ids = _example_inputs(model)
    cache_axes = {0: "batch", 2: "cached"}
    tmp = _atomic_folder(folder)
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python branch on shapes; the ones it records are fixed for
            # both graphs (the prefix is always longer than one token, a decode step always one).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                PrefixGraph(model).eval(),
                (pixel_values, ids),
                str(tmp / PREFIX_FILE),
                dynamo=False,
                opset_version=opset,
                input_names=["pixel_values", "input_ids"],
                output_names=["logits", *[f"present.{n}" for n in names]],
                dynamic_axes={
                    "pixel_values": {0: "batch"},
                    "input_ids": {0: "batch", 1: "prompt"},
                    "logits": {0: "batch"},
                    **{f"present.{n}": cache_axes for n in names},
                },
            )
            past = PrefixGraph(model)(pixel_values, ids)[1:]
            token, position = ids[:, -1:], torch.tensor([[past[0].shape[2]]])
            torch.onnx.export(
                DecodeGraph(model).eval(),
                (token, position, *past),
                str(tmp / DECODE_FILE),
                dynamo=False,
                opset_version=opset,
                input_names=["token", "position", *[f"past.{n}" for n in names]],
                output_names=["logits", *[f"present.{n}" for n in names]],
                dynamic_axes={
                    "token": {0: "batch"},
                    "position": {0: "batch"},
                    "logits": {0: "batch"},
                    **{f"past.{n}": cache_axes for n in names},
                    **{f"present.{n}": cache_axes for n in names},
                },
            )
        (tmp / POLICY_FILE).write_text(json.dumps(policy_metadata(model), indent=2) + "\n")
        commit_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _float32_copy(model: OpenVLA) -> OpenVLA:
    import copy

    clone = copy.deepcopy(model).float()
    clone.attach_processor(model.processor)
    return clone.eval()


def quantize_int8(folder: str | Path) -> list[Path]:
    """onnxruntime's dynamic int8 quantization of both graphs (weights int8, activations quantized
    per call): `prefix.int8.onnx`, `decode.int8.onnx` beside the float32 ones."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    written = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor to the root logger
    try:
        for name in (PREFIX_FILE, DECODE_FILE):
            target = folder / name.replace(".onnx", f"{INT8_SUFFIX}.onnx")
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                quantize_dynamic(str(folder / name), str(tmp), weight_type=QuantType.QInt8)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(target)
    finally:
        root.setLevel(level)
    return written


def build_tensorrt_engines(onnx_dir: Path, max_prompt: int = 256, max_cache: int = 2048) -> list[Path] | None:
    """A serialized TensorRT engine per graph (batch 1, dynamic prompt and cache lengths) when
    `tensorrt` imports; None (and a log line) otherwise. Untested here: no GPU on this machine."""
    try:
        import tensorrt as trt
    except ImportError:
        log.info("tensorrt is not importable: engine build skipped")
        return None
    meta = json.loads((onnx_dir / POLICY_FILE).read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    engines = []
    for name in (PREFIX_FILE, DECODE_FILE):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_dir / name)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"{onnx_dir / name}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            low, best, high = ([1 if d == -1 else d for d in shape] for _ in range(3))
            if tensor.name == "input_ids":
                low[1], best[1], high[1] = 2, 32, max_prompt
            elif tensor.name.startswith("past."):
                low[2], best[2], high[2] = 1, 128, max_cache
            profile.set_shape(tensor.name, low, best, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{onnx_dir / name}: TensorRT engine build failed")
        target = onnx_dir / name.replace(".onnx", ".plan")
        target.write_bytes(bytes(serialized))
        engines.append(target)
    log.info("TensorRT engines for %d layers: %s", meta["n_layers"], [str(e) for e in engines])
    return engines
