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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from vla.model.action_tokenizer import ActionTokenizer, action_stats
from vla.model.checkpoint import _atomic_folder, commit_folder
from vla.model.configuration import OpenVLAConfig
from vla.model.modeling import ActionPrediction, OpenVLA, split_prediction, stop_at_eos
from vla.model.processing import ImageLike, OpenVLAProcessor, build_prompt

log = logging.getLogger(__name__)

PREFIX_FILE, DECODE_FILE, POLICY_FILE = "prefix.onnx", "decode.onnx", "policy.json"
INT8_SUFFIX = ".int8"


def cache_names(n_layers: int) -> list[str]:
    return [f"{kv}.{i}" for i in range(n_layers) for kv in ("key", "value")]


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
    """What the onnxruntime policy needs besides the graphs and the processor."""
    return {
        "n_layers": model.config.llama_config.num_hidden_layers,
        "empty_token_id": int(model.empty_token_id),
        "eos_token_id": int(model.language_model.config.eos_token_id),
        "constrain_action_decoding": bool(model.config.extra.get("constrain_action_decoding", False)),
        "action_chunk_size": model.action_chunk_size,
        "grounding_tokens": model.grounding_tokens,
        "parallel_decoding": model.parallel_decoding,
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


class OnnxPolicy:
    """onnxruntime twin of `OpenVLA.predict` / `predict_action`: same prompt handling, the same greedy
    decoding (constrained to the 256 action tokens when the checkpoint says so) and the same
    `ActionPrediction`. `model_dir` is the exported OpenVLA folder (processor, statistics)."""

    def __init__(
        self,
        model_dir: str | Path,
        onnx_dir: str | Path,
        precision: str = "fp32",
        threads: int = 0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        import onnxruntime as ort

        model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision={precision!r}: choose fp32 or int8")
        suffix = INT8_SUFFIX if precision == "int8" else ""
        files = [onnx_dir / f.replace(".onnx", f"{suffix}.onnx") for f in (PREFIX_FILE, DECODE_FILE)]
        for path in [*files, onnx_dir / POLICY_FILE, model_dir / "config.json"]:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (run scripts/export.py first)")
        self.config = OpenVLAConfig.from_json_file(model_dir / "config.json")
        stats_file = model_dir / "dataset_statistics.json"
        if stats_file.is_file():  # as OpenVLA.from_pretrained: a fine-tune's statistics win
            self.config.norm_stats = json.loads(stats_file.read_text())
        self.processor = OpenVLAProcessor.from_pretrained(model_dir, self.config)
        self.action_tokenizer = ActionTokenizer(self.config.vocab_size, self.config.n_action_bins)
        self.meta = json.loads((onnx_dir / POLICY_FILE).read_text())
        self.names = cache_names(self.meta["n_layers"])
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle onnxruntime threads otherwise spin for the next run and fight torch's own threads
        # (the processor runs in torch) for the cores: measured 5 -> 15 ms per action on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.prefix = ort.InferenceSession(str(files[0]), options, providers=list(providers))
        self.decode = ort.InferenceSession(str(files[1]), options, providers=list(providers))
        self.files = files

    @property
    def norm_stats(self) -> dict[str, Any]:
        return self.config.norm_stats or {}

    def generate(
        self, ids: np.ndarray, pixel_values: np.ndarray, n_tokens: int, constrain: bool, parallel: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding for rows of equal length; returns tokens [B, n] and their logits [B, n, V].

        `parallel` (a parallel-decoding model's action chunk): the last `parallel` tokens are fed back as
        the placeholder instead of themselves. The decode graph takes one token per step, so this makes
        the same logits as the torch model's single pass over the placeholders, in as many steps."""
        lo, hi = self.action_tokenizer.first_action_token, self.action_tokenizer.last_action_token
        placeholder = self.meta.get("action_placeholder_id", 0)
        outputs = self.prefix.run(None, {"pixel_values": pixel_values, "input_ids": ids})
        position = outputs[1].shape[2]
        tokens, logits = [], []
        for step in range(n_tokens):
            step_logits = outputs[0]
            logits.append(step_logits)
            token = step_logits[:, lo : hi + 1].argmax(-1) + lo if constrain else step_logits.argmax(-1)
            tokens.append(token.astype(np.int64))
            if step == n_tokens - 1:
                break
            fed = tokens[-1] if step < n_tokens - parallel else np.full_like(tokens[-1], placeholder)
            feeds = {"token": fed[:, None], "position": np.full((len(ids), 1), position, np.int64)}
            feeds.update({f"past.{n}": t for n, t in zip(self.names, outputs[1:])})
            outputs = self.decode.run(None, feeds)
            position += 1
        return np.stack(tokens, axis=1), np.stack(logits, axis=1)

    def predict_action(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        constrain: bool | None = None,
        return_logits: bool = False,
    ):
        """As `OpenVLA.predict_action`. Rows of different lengths are decoded one at a time (the
        graphs take no padding mask). With `return_logits`, also the logits of every step."""
        _, stats = action_stats(self.norm_stats, unnorm_key)
        n_dims, chunk = len(stats["q01"]), int(self.meta["action_chunk_size"])
        n_ground = int(self.meta.get("grounding_tokens", 0))
        n_tokens = n_ground + n_dims * chunk
        parallel = n_dims * chunk if self.meta.get("parallel_decoding", False) else 0
        if constrain is None:
            constrain = bool(self.meta["constrain_action_decoding"])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = self.meta["empty_token_id"]
        prompts = [
            [t for t, k in zip(ids, keep) if k]
            for ids, keep in zip(input_ids.tolist(), attention_mask.tolist())
        ]
        rows = [ids if ids[-1] == empty else [*ids, empty] for ids in prompts]
        pixels = pixel_values.float().numpy()
        groups = (
            [list(range(len(rows)))] if len({len(r) for r in rows}) == 1 else [[i] for i in range(len(rows))]
        )
        token_ids = np.zeros((len(rows), n_tokens), np.int64)
        all_logits: list[np.ndarray] = [np.empty(0)] * len(rows)
        for group in groups:
            ids = np.asarray([rows[i] for i in group], np.int64)
            tokens, logits = self.generate(ids, pixels[group], n_tokens, constrain, parallel)
            token_ids[group] = tokens
            for j, i in enumerate(group):
                all_logits[i] = logits[j]
        if not constrain:
            token_ids = stop_at_eos(rows, token_ids, self.meta["eos_token_id"])
        pred = split_prediction(self.action_tokenizer, token_ids, rows, prompts, stats, n_ground, chunk)
        return (pred, np.stack(all_logits)) if return_logits else pred

    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str],
        unnorm_key: str | None = None,
        constrain: bool | None = None,
    ) -> ActionPrediction:
        inputs = self.processor(images, [build_prompt(t) for t in instructions])
        return self.predict_action(**inputs, unnorm_key=unnorm_key, constrain=constrain)


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
