"""ONNX export of an OpenVLA: a KV cache for the token head, one graph for a continuous head.

The token head's two graphs keep the per-token cost constant, as transformers' own cached decoding does:

- `prefix.onnx`: (pixel_values [B,C,H,W], input_ids [B,L], and `proprio` [B,S] for a model with a state
  input) -> logits at the last position [B,V] and the key/value cache of every layer
  (`present.key.<i>`, `present.value.<i>`, [B,heads,S,head_dim]); the prompt ids already end with the
  '▁' token OpenVLA appends before the action tokens.
- `decode.onnx`: (token [B,1], position [B,1], `past.key.<i>`, `past.value.<i>`) -> logits [B,V] and
  the cache grown by one position.

A continuous head (l1, OpenVLA-OFT) predicts the chunk in one pass, so it has one graph:

- `chunk.onnx`: (pixel_values, input_ids = the prompt ids with '▁' then G + K*D placeholder ids, and
  `proprio` [B,S] for a model with a state input) -> `actions` [B,K,D], normalized and clamped to
  [-1, 1] as `L1Head.predict` does (and `grounding` [B,G] when the layout has grounding values).

So does a parallel-decoding token model without grounding tokens (OpenVLA-OFT's parallel decoding):

- `chunk.onnx`: (pixel_values, input_ids = the prompt ids with '▁' then K*D - 1 placeholder ids,
  proprio) -> `logits` [B,L-1,V] at every prompt position after `<s>`; the runtime decodes the last K*D
  (the '▁' predicts the first action token, each placeholder the next), as `TokenHead.generate` does
  in its one pass.

`proprio` is the normalized state (`vla.model.proprio.normalize_proprio`; the onnxruntime policy
normalizes raw states as the torch model does). `policy.json` names the graphs and records the head,
K, D and S beside the ids the runtime needs.

All are traced with the TorchScript exporter (`dynamo=False`: onnxscript, which the dynamo exporter
needs, is not a dependency) from wrappers that take and return plain tensors.
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

from vla.inference.onnx_policy import (
    CHUNK_FILE,
    DECODE_FILE,
    POLICY_FILE,
    PREFIX_FILE,
    cache_names,
    graph_files,
    graph_paths,
    one_pass,
)
from vla.model.checkpoint import _atomic_folder, commit_folder
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt

log = logging.getLogger(__name__)


def _flat_cache(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _embeds(model: OpenVLA, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio) -> torch.Tensor:
    """`[<s>] + visual prefix (patches, then the state token) + the rest of the prompt`, as `forward`."""
    tokens = model.language_model.get_input_embeddings()(input_ids)
    prefix = model.visual_prefix(pixel_values, proprio, model.film_language(input_ids, tokens))
    return torch.cat([tokens[:, :1], prefix.to(tokens.dtype), tokens[:, 1:]], dim=1)


class PrefixGraph(nn.Module):
    """Image (+ state) + prompt -> last-position logits and the KV cache (what `TokenHead.generate` runs
    first, for rows of equal length)."""

    def __init__(self, model: OpenVLA):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None = None
    ):
        out = self.model.language_model(
            inputs_embeds=_embeds(self.model, pixel_values, input_ids, proprio), use_cache=True
        )
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


class ChunkGraph(nn.Module):
    """Image (+ state) + prompt ending in K*D placeholders -> the normalized chunk [B, K, D] (what
    `L1Head.predict` runs, for rows of equal length: one pass, no language-model head)."""

    def __init__(self, model: OpenVLA):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None = None
    ):
        head = self.model.head
        embeds = _embeds(self.model, pixel_values, input_ids, proprio)
        # use_cache=True only for the trace: without a cache (or a mask) transformers looks for packed
        # sequences in the positions with `torch.diff`, which has no ONNX export; the cache itself is
        # no output of the graph, the hidden states are the same.
        hidden = self.model.language_model.model(inputs_embeds=embeds, use_cache=True).last_hidden_state
        actions = head.actions(hidden[:, -head.n_actions :]).float().clamp(-1.0, 1.0)
        if not head.layout.grounding:
            return actions
        ground = hidden[:, -head.n_positions : -head.n_actions]
        return actions, head.grounding(ground).float().clamp(-1.0, 1.0)


class TokenChunkGraph(nn.Module):
    """Image (+ state) + prompt ending in placeholders -> the logits at every prompt position after
    `<s>` [B, L-1, V] (a parallel-decoding token model's one pass, for rows of equal length)."""

    def __init__(self, model: OpenVLA):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None = None
    ):
        embeds = _embeds(self.model, pixel_values, input_ids, proprio)
        # use_cache=True only for the trace (see ChunkGraph).
        logits = self.model.language_model(inputs_embeds=embeds, use_cache=True).logits
        return logits[:, embeds.shape[1] - input_ids.shape[1] + 1 :].float()


def chunk_tokens(model: OpenVLA) -> int:
    """K*D of a parallel-decoding token model: the tokens of its one pass (D of its statistics keys,
    the largest where they differ); 0 for other layouts."""
    layout = model.layout
    if layout.continuous or not one_pass(layout):
        return 0
    dims = [len(stats["action"]["q01"]) for stats in model.norm_stats.values() if "action" in stats]
    return layout.chunk_size * max(dims, default=0)


def policy_metadata(model: OpenVLA) -> dict[str, Any]:
    """What the onnxruntime policy needs besides the graphs, the processor and the action layout (those
    come from the exported model folder's config.json): the graph files, the head and its sizes (checked
    against the model folder's layout), the token ids it appends."""
    layout = model.layout
    return {
        "graphs": graph_files(layout),
        "head": layout.head,
        "chunk_size": layout.chunk_size,
        "action_dim": layout.action_dim,
        "grounding": layout.grounding,
        # The chunk graph's placeholder inputs after the prompt (0: prefix + decode graphs).
        "placeholders": layout.placeholders or max(chunk_tokens(model) - 1, 0),
        "proprio_dim": layout.proprio_dim,
        "n_layers": model.config.llama_config.num_hidden_layers,
        "empty_token_id": int(model.empty_token_id),
        "eos_token_id": int(model.language_model.config.eos_token_id),
        "action_placeholder_id": model.action_placeholder_id,
    }


def _example_inputs(model: OpenVLA) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: pixel_values, input_ids (the chunk graph's with its placeholders) and, for a
    model with a state input, a state."""
    size = model.config.image_size
    channels = 3 * len(model.config.towers)
    ids = [*model.processor.tokenizer(build_prompt("reach the red ball"))["input_ids"], model.empty_token_id]
    layout = model.layout
    ids += [model.action_placeholder_id] * (layout.placeholders or max(chunk_tokens(model) - 1, 0))
    inputs = (torch.zeros(1, channels, size, size), torch.tensor([ids]))
    return (*inputs, torch.zeros(1, layout.proprio_dim)) if layout.proprio_dim else inputs


@torch.no_grad()
def export_onnx(model: OpenVLA, folder: str | Path, opset: int = 17) -> Path:
    """Write the model's graphs (`prefix.onnx` + `decode.onnx`, or `chunk.onnx` for a one-pass layout:
    a continuous head or parallel decoding without grounding) and `policy.json` into `folder`
    (atomically). The model is exported in float32 (a copy if it is
    stored in another dtype)."""
    import warnings

    folder = Path(folder)
    if model.layout.grounding_tokens_first:
        raise ValueError(
            "ONNX export of a continuous head with grounding tokens first (model.layout."
            "grounding_tokens_first) is not available: serve the model with the torch backend"
        )
    if next(model.parameters()).dtype != torch.float32:
        model = _float32_copy(model)
    layout = model.layout
    inputs = _example_inputs(model)
    names = ["pixel_values", "input_ids", "proprio"][: len(inputs)]
    axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "prompt"}, "proprio": {0: "batch"}}
    axes = {name: axes[name] for name in names}
    tmp = _atomic_folder(folder)
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python branch on shapes; the ones it records are fixed for
            # every graph (the prefix is always longer than one token, a decode step always one, the
            # state and the chunk have the layout's sizes).
            warnings.simplefilter("ignore")
            if layout.continuous:
                outputs = ["actions", "grounding"] if layout.grounding else ["actions"]
                _trace(ChunkGraph(model), inputs, tmp / CHUNK_FILE, opset, names, outputs,
                       {**axes, **{name: {0: "batch"} for name in outputs}})  # fmt: skip
            elif one_pass(layout):
                _trace(TokenChunkGraph(model), inputs, tmp / CHUNK_FILE, opset, names, ["logits"],
                       {**axes, "logits": {0: "batch", 1: "prompt"}})  # fmt: skip
            else:
                _export_token_graphs(model, inputs, names, axes, tmp, opset)
        (tmp / POLICY_FILE).write_text(json.dumps(policy_metadata(model), indent=2) + "\n")
        commit_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _trace(
    graph: nn.Module,
    inputs: tuple,
    path: Path,
    opset: int,
    input_names: list[str],
    outputs: list[str],
    axes: dict,
) -> None:
    """One graph traced with the TorchScript exporter (see the module docstring)."""
    torch.onnx.export(graph.eval(), inputs, str(path), dynamo=False, opset_version=opset,
                      input_names=input_names, output_names=outputs, dynamic_axes=axes)  # fmt: skip


def _export_token_graphs(
    model: OpenVLA, inputs: tuple, names: list[str], axes: dict, tmp: Path, opset: int
) -> None:
    cache = cache_names(model.config.llama_config.num_hidden_layers)
    cache_axes = {0: "batch", 2: "cached"}
    present = [f"present.{n}" for n in cache]
    _trace(PrefixGraph(model), inputs, tmp / PREFIX_FILE, opset, names, ["logits", *present],
           {**axes, "logits": {0: "batch"}, **{n: cache_axes for n in present}})  # fmt: skip
    past = PrefixGraph(model)(*inputs)[1:]
    token, position = inputs[1][:, -1:], torch.tensor([[past[0].shape[2]]])
    past_names = [f"past.{n}" for n in cache]
    batch_axes = {name: {0: "batch"} for name in ("token", "position", "logits")}
    _trace(DecodeGraph(model), (token, position, *past), tmp / DECODE_FILE, opset,
           ["token", "position", *past_names], ["logits", *present],
           {**batch_axes, **{n: cache_axes for n in [*past_names, *present]}})  # fmt: skip


def _float32_copy(model: OpenVLA) -> OpenVLA:
    import copy

    clone = copy.deepcopy(model).float()
    clone.attach_processor(model.processor)
    return clone.eval()


def quantize_int8(folder: str | Path) -> list[Path]:
    """onnxruntime's dynamic int8 quantization of every graph (weights int8, activations quantized per
    call): `prefix.int8.onnx`, `decode.int8.onnx` (or `chunk.int8.onnx`) beside the float32 ones."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    written = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor to the root logger
    try:
        for source, target in zip(graph_paths(folder, "fp32"), graph_paths(folder, "int8")):
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(target)
    finally:
        root.setLevel(level)
    return written


def build_tensorrt_engines(onnx_dir: Path, max_prompt: int = 256, max_cache: int = 2048) -> list[Path] | None:
    """A serialized TensorRT engine per graph (batch 1, dynamic prompt and cache lengths; the chunk
    graph's prompt holds K*D placeholders more) when `tensorrt` imports; None (and a log line)
    otherwise. Untested here: no GPU on this machine."""
    try:
        import tensorrt as trt
    except ImportError:
        log.info("tensorrt is not importable: engine build skipped")
        return None
    meta = json.loads((onnx_dir / POLICY_FILE).read_text())
    placeholders = meta.get("placeholders", meta["chunk_size"] * meta["action_dim"])  # 0 for the token head
    logger = trt.Logger(trt.Logger.WARNING)
    engines = []
    for path in graph_paths(onnx_dir, "fp32"):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"{path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            low, best, high = ([1 if d == -1 else d for d in shape] for _ in range(3))
            if tensor.name == "input_ids":
                low[1], best[1], high[1] = 2 + placeholders, 32 + placeholders, max_prompt + placeholders
            elif tensor.name.startswith("past."):
                low[2], best[2], high[2] = 1, 128, max_cache
            profile.set_shape(tensor.name, low, best, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{path}: TensorRT engine build failed")
        target = path.with_suffix(".plan")
        target.write_bytes(bytes(serialized))
        engines.append(target)
    log.info("TensorRT engines (%s head): %s", meta["head"], [str(e) for e in engines])
    return engines
