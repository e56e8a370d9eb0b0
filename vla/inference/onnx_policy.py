"""The onnxruntime twin of `OpenVLA.predict`: the exported prefix + decode graphs (`vla.export.onnx`)
decoding greedily with the KV cache, with the torch model's prompt handling, layout and outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import ActionLayout
from vla.model.action_tokenizer import ActionTokenizer, action_stats
from vla.model.configuration import OpenVLAConfig
from vla.model.layout import (
    ActionPrediction,
    decoding_rows,
    layout_from_config,
    split_prediction,
    stop_at_eos,
)
from vla.model.processing import ImageLike, OpenVLAProcessor, build_prompt

# The exported graphs' files (written by vla.export.onnx) and their cache tensor names.
PREFIX_FILE, DECODE_FILE, POLICY_FILE = "prefix.onnx", "decode.onnx", "policy.json"
INT8_SUFFIX = ".int8"


def cache_names(n_layers: int) -> list[str]:
    return [f"{kv}.{i}" for i in range(n_layers) for kv in ("key", "value")]


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
        self.model_dir = model_dir
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

    @property
    def layout(self) -> ActionLayout:
        """The exported model's action layout (its config.json, as the torch model reads it)."""
        return layout_from_config(self.config.extra, str(self.model_dir / "config.json"))

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
        layout = self.layout
        n_tokens, parallel = layout.n_tokens(len(stats["q01"])), layout.parallel_tokens(len(stats["q01"]))
        if constrain is None:
            constrain = layout.constrain_decoding
        prompts, rows = decoding_rows(input_ids, attention_mask, self.meta["empty_token_id"])
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
        pred = split_prediction(self.action_tokenizer, token_ids, rows, prompts, stats, layout)
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
