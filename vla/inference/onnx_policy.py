"""The onnxruntime twin of `OpenVLA.predict`: the exported graphs (`vla.export.onnx`) with the torch
model's prompt handling, state normalization, layout and outputs.

A token-head export decodes greedily with the KV cache (prefix + decode graphs); a parallel-decoding
token export without grounding tokens, and a continuous-head export (l1), run their one chunk graph over
the prompt and the chunk's placeholders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import ActionLayout
from vla.model.action_tokenizer import ActionTokenizer, action_stats, unnormalize
from vla.model.configuration import CheckpointError, OpenVLAConfig
from vla.model.layout import (
    ActionPrediction,
    decoding_rows,
    layout_from_config,
    split_prediction,
    stop_at_eos,
)
from vla.model.processing import ImageLike, OpenVLAProcessor, build_prompt
from vla.model.proprio import normalize_proprio

# The exported graphs' files (written by vla.export.onnx) and their cache tensor names.
PREFIX_FILE, DECODE_FILE, CHUNK_FILE, POLICY_FILE = "prefix.onnx", "decode.onnx", "chunk.onnx", "policy.json"
INT8_SUFFIX = ".int8"


def cache_names(n_layers: int) -> list[str]:
    return [f"{kv}.{i}" for i in range(n_layers) for kv in ("key", "value")]


def one_pass(layout: ActionLayout) -> bool:
    """Whether a query is one forward pass (one chunk graph): a continuous head, or a parallel-decoding
    token head without grounding tokens (which are decoded one at a time before the chunk)."""
    return layout.continuous or (layout.parallel_decoding and not layout.grounding)


def graph_files(layout: ActionLayout) -> list[str]:
    """The graphs of an export: one chunk graph for a one-pass layout (`one_pass`), else prefix +
    decode (the token head's KV cache)."""
    return [CHUNK_FILE] if one_pass(layout) else [PREFIX_FILE, DECODE_FILE]


def graph_paths(onnx_dir: Path, precision: str) -> list[Path]:
    """The graph files of `onnx_dir` (named in its policy.json) at `precision` (fp32 | int8)."""
    meta = json.loads((onnx_dir / POLICY_FILE).read_text())
    # Exports written before policy.json named its graphs hold the token head's two.
    names = meta.get("graphs", [PREFIX_FILE, DECODE_FILE])
    suffix = INT8_SUFFIX if precision == "int8" else ""
    return [onnx_dir / name.replace(".onnx", f"{suffix}.onnx") for name in names]


class OnnxPolicy:
    """onnxruntime twin of `OpenVLA.predict` / `predict_action`: same prompt handling, the same robot-state
    normalization, the same decoding (greedy, constrained to the 256 action tokens when the checkpoint
    says so; or the l1 head's one pass) and the same `ActionPrediction`. `model_dir` is the exported
    OpenVLA folder (processor, statistics, layout)."""

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
        for path in (onnx_dir / POLICY_FILE, model_dir / "config.json"):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (run scripts/export.py first)")
        files = graph_paths(onnx_dir, precision)
        for path in files:
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
        self._check_meta(onnx_dir)
        self.names = cache_names(self.meta["n_layers"])
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle onnxruntime threads otherwise spin for the next run and fight torch's own threads
        # (the processor runs in torch) for the cores: measured 5 -> 15 ms per action on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = [ort.InferenceSession(str(f), options, providers=list(providers)) for f in files]
        # Exports of parallel-decoding token models written before their chunk graph hold prefix + decode.
        if len(sessions) == 1:
            (self.chunk,) = sessions
        else:
            self.prefix, self.decode = sessions
        self.files = files

    def _check_meta(self, onnx_dir: Path) -> None:
        """The graphs must be the exported model's: same head, chunk, action and state sizes."""
        layout = self.layout
        # Exports written before the l1 head and the state input recorded none of these: token graphs.
        exported = {
            "head": self.meta.get("head", "tokens"),
            "chunk_size": self.meta.get("chunk_size", layout.chunk_size),
            "action_dim": self.meta.get("action_dim", 0),
            "proprio_dim": self.meta.get("proprio_dim", 0),
        }
        expected = {key: getattr(layout, key) for key in exported}
        if exported != expected:
            raise CheckpointError(
                f"{onnx_dir / POLICY_FILE}: graphs exported for {exported}, but {self.model_dir / 'config.json'} "
                f"has {expected}: export the model again"
            )

    @property
    def norm_stats(self) -> dict[str, Any]:
        return self.config.norm_stats or {}

    @property
    def layout(self) -> ActionLayout:
        """The exported model's action layout (its config.json, as the torch model reads it)."""
        return layout_from_config(self.config.extra, str(self.model_dir / "config.json"))

    @property
    def proprio_dim(self) -> int:
        """Robot-state values the policy reads (0: none)."""
        return self.layout.proprio_dim

    def generate(
        self,
        ids: np.ndarray,
        pixel_values: np.ndarray,
        n_tokens: int,
        constrain: bool,
        parallel: int = 0,
        proprio: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding for rows of equal length; returns tokens [B, n] and their logits [B, n, V].
        `proprio`: normalized states [B, S] for a model with a state input.

        `parallel` (a parallel-decoding model's action chunk): the last `parallel` tokens are fed back as
        the placeholder instead of themselves. The decode graph takes one token per step, so this makes
        the same logits as the torch model's single pass over the placeholders, in as many steps."""
        lo, hi = self.action_tokenizer.first_action_token, self.action_tokenizer.last_action_token
        placeholder = self.meta.get("action_placeholder_id", 0)
        feeds = {"pixel_values": pixel_values, "input_ids": ids}
        if proprio is not None:
            feeds["proprio"] = proprio
        outputs = self.prefix.run(None, feeds)
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

    def token_chunk(
        self,
        ids: np.ndarray,
        pixel_values: np.ndarray,
        n_tokens: int,
        constrain: bool,
        proprio: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A parallel-decoding token model's one pass for rows of equal length: the prompt ('▁' last)
        then n_tokens - 1 placeholders; the logits at the last n_tokens positions (the '▁' and the
        placeholders, as `TokenHead.generate` gets them) decoded greedily. Returns tokens [B, n] and
        their logits [B, n, V]."""
        lo, hi = self.action_tokenizer.first_action_token, self.action_tokenizer.last_action_token
        holders = np.full((len(ids), n_tokens - 1), self.meta["action_placeholder_id"], np.int64)
        feeds = {"pixel_values": pixel_values, "input_ids": np.concatenate([ids, holders], axis=1)}
        if proprio is not None:
            feeds["proprio"] = proprio
        logits = self.chunk.run(None, feeds)[0][:, -n_tokens:]
        tokens = logits[..., lo : hi + 1].argmax(-1) + lo if constrain else logits.argmax(-1)
        return tokens.astype(np.int64), logits

    def chunk_actions(
        self, ids: np.ndarray, pixel_values: np.ndarray, proprio: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The l1 head's one pass for rows of equal length (prompt ids, '▁' included): the normalized
        chunk [B, K, D] and the grounding values [B, G] (G = 0: none), both in [-1, 1]. The G + K*D
        placeholder inputs are appended here."""
        layout = self.layout
        n = layout.placeholders
        holders = np.full((len(ids), n), self.meta["action_placeholder_id"], np.int64)
        feeds = {"pixel_values": pixel_values, "input_ids": np.concatenate([ids, holders], axis=1)}
        if proprio is not None:
            feeds["proprio"] = proprio
        outputs = self.chunk.run(None, feeds)
        grounding = outputs[1] if layout.grounding else np.zeros((len(ids), 0), np.float32)
        return outputs[0], grounding

    def _state(self, proprio: Any, key: str, batch: int) -> np.ndarray | None:
        """Normalized float32 [B, S] states, exactly as `OpenVLA.predict_action` makes them."""
        if self.proprio_dim:
            return normalize_proprio(proprio, self.norm_stats[key], batch, key)
        if proprio is not None:
            raise ValueError("this model was not trained with a robot state; pass proprio=None")
        return None

    def predict_action(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        constrain: bool | None = None,
        return_logits: bool = False,
        proprio: np.ndarray | torch.Tensor | None = None,
    ):
        """As `OpenVLA.predict_action`. Rows of different lengths run one at a time (the graphs take no
        padding mask). With `return_logits` (token head only), also the logits of every step.
        `proprio`: [B, S] robot states in robot units, for a model trained with them."""
        key, stats = action_stats(self.norm_stats, unnorm_key)
        layout = self.layout
        if constrain is None:
            constrain = layout.constrain_decoding
        prompts, rows = decoding_rows(input_ids, attention_mask, self.meta["empty_token_id"])
        state = self._state(proprio, key, len(rows))
        pixels = pixel_values.float().numpy()
        groups = (
            [list(range(len(rows)))] if len({len(r) for r in rows}) == 1 else [[i] for i in range(len(rows))]
        )
        n_dims = len(stats["q01"])
        if layout.continuous:
            if return_logits:
                raise ValueError(
                    f"the {layout.head} head writes no logits; return_logits is for the token head"
                )
            if n_dims != layout.action_dim:
                raise ValueError(
                    f"the {layout.head} head predicts {layout.action_dim}-dimensional actions; the data or "
                    f"statistics key has {n_dims}"
                )
            normalized = np.zeros((len(rows), layout.chunk_size, n_dims))
            grounding = np.zeros((len(rows), layout.grounding))
            for group in groups:
                ids = np.asarray([rows[i] for i in group], np.int64)
                normalized[group], grounding[group] = self.chunk_actions(
                    ids, pixels[group], None if state is None else state[group]
                )
            return ActionPrediction(
                unnormalize(normalized, stats), normalized, None, prompts, rows, grounding
            )
        n_tokens, parallel = layout.n_tokens(n_dims), layout.parallel_tokens(n_dims)
        token_ids = np.zeros((len(rows), n_tokens), np.int64)
        all_logits: list[np.ndarray] = [np.empty(0)] * len(rows)
        for group in groups:
            ids = np.asarray([rows[i] for i in group], np.int64)
            group_state = None if state is None else state[group]
            if hasattr(self, "chunk"):  # one pass: parallel decoding, no grounding tokens
                tokens, logits = self.token_chunk(ids, pixels[group], n_tokens, constrain, group_state)
            else:
                tokens, logits = self.generate(ids, pixels[group], n_tokens, constrain, parallel, group_state)
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
        proprio: np.ndarray | None = None,
    ) -> ActionPrediction:
        """Actions for raw images, instructions and, for a model trained with them, robot states [B, S]
        in robot units (as `OpenVLA.predict`)."""
        inputs = self.processor(images, [build_prompt(t) for t in instructions])
        return self.predict_action(**inputs, unnorm_key=unnorm_key, constrain=constrain, proprio=proprio)
