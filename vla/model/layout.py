"""The action layout: how a fine-tune arranges what the model writes after the prompt, in one place.

A training sample's text is OpenVLA's prompt, then G grounding tokens (ECoT-style, `vla.data.grounding`),
then the action chunk (K steps x D dims), then `</s>`:

    <s> In: What action should the robot take to {instruction}?\\nOut: ▁ [G grounding] [K*D actions] </s>

Loss is on everything after the prompt; chunk steps past an episode's end repeat its last action and
carry no loss. This module is the one place that builds those ids and labels (`encode_sample`), finds
the chunk and grounding positions in a batch (`chunk_span`, `grounding_positions`) and splits a
prediction back into grounding values and actions (`split_prediction`). The dataset, the
LightningModule, `OpenVLA.predict_action` and the onnxruntime policy all go through it.

The layout itself (`ActionLayout`, the `model.layout` config group) is saved under one key of the
model's `config.json`, `"action_layout"`; folders written before it existed (separate
`action_chunk_size`, `grounding_tokens`, ... keys) still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla.config.model import ActionLayout
from vla.model.action_tokenizer import ActionTokenizer, unnormalize
from vla.model.configuration import CheckpointError

IGNORE_INDEX = -100
LAYOUT_KEY = "action_layout"
# What earlier versions wrote into config.json instead of LAYOUT_KEY: legacy key -> ActionLayout field.
LEGACY_KEYS = {
    "action_chunk_size": "chunk_size",
    "grounding_tokens": "grounding",
    "parallel_decoding": "parallel_decoding",
    "center_crop_scale": "center_crop_scale",
    "constrain_action_decoding": "constrain_decoding",
}


def layout_from_config(extra: dict[str, Any], source: str = "config.json") -> ActionLayout:
    """The layout saved in a config.json's extra keys: `"action_layout"` (unknown keys and wrong types
    fail naming them), else the legacy keys, else OpenVLA's own layout (one action, no grounding)."""
    raw = extra.get(LAYOUT_KEY)
    if raw is None:
        raw, where = {field: extra[key] for key, field in LEGACY_KEYS.items() if key in extra}, ""
        names = {field: key for key, field in LEGACY_KEYS.items()}  # report the key as the file has it
    elif not isinstance(raw, dict):
        raise CheckpointError(f"{source}: {LAYOUT_KEY} must be an object, got {type(raw).__name__}")
    else:
        where, names = f"{LAYOUT_KEY}.", {}
    fields = {f.name: f for f in dataclasses.fields(ActionLayout)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CheckpointError(f"{source}: {LAYOUT_KEY} has unknown keys {unknown}; known: {sorted(fields)}")
    kinds = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for key, value in raw.items():
        kind = kinds[str(fields[key].type)]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            shown = f"{where}{names.get(key, key)}"
            raise CheckpointError(f"{source}: {shown}={value!r} must be {fields[key].type}")
    try:
        return ActionLayout(**raw)
    except ValueError as err:
        raise CheckpointError(f"{source}: {LAYOUT_KEY}: {err}") from None


def store_layout(extra: dict[str, Any], layout: ActionLayout) -> None:
    """Write `layout` into a config.json's extra keys (replacing any legacy keys)."""
    for key in LEGACY_KEYS:
        extra.pop(key, None)
    extra[LAYOUT_KEY] = dataclasses.asdict(layout)


# -- samples ---------------------------------------------------------------------------------------
def chunk_steps(t: int, num_steps: int, chunk_size: int) -> tuple[list[int], list[bool]]:
    """The steps whose actions form the chunk at step t (the last step repeated past the episode end),
    and which of them are real."""
    steps = [t + k for k in range(chunk_size)]
    return [min(s, num_steps - 1) for s in steps], [s < num_steps for s in steps]


def encode_sample(
    prompt: np.ndarray, grounding: np.ndarray, chunk: np.ndarray, real: Sequence[bool], eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Input ids and labels of one sample: `prompt` ids (ending with '▁'), grounding tokens [G], the
    chunk's action tokens [K, D] of which the steps with `real` False are padding (no loss), `</s>`."""
    actions = chunk.reshape(-1)
    targets = np.where(np.repeat(np.asarray(real), chunk.shape[1]), actions, IGNORE_INDEX)
    end = np.array([eos], dtype=np.int64)
    input_ids = np.concatenate([prompt, grounding, actions, end])
    labels = np.concatenate([np.full_like(prompt, IGNORE_INDEX), grounding, targets, end])
    return input_ids, labels


# -- batches ---------------------------------------------------------------------------------------
def chunk_span(labels: torch.Tensor, n_actions: int) -> torch.Tensor:
    """[B, K*D] positions of each row's action chunk: the K*D tokens right before its `</s>` (the last
    label that is not IGNORE_INDEX), padded chunk steps included."""
    has_label = (labels != IGNORE_INDEX).long()
    eos = labels.shape[1] - 1 - has_label.flip(1).argmax(1)
    return eos[:, None] - n_actions + torch.arange(n_actions, device=labels.device)


def grounding_positions(labels: torch.Tensor, n_grounding: int, n_actions: int) -> torch.Tensor:
    """[B, L] bool: each row's known grounding tokens, among the G positions right before its K*D
    (`n_actions`) chunk tokens; a sample whose episode has no grounding values has IGNORE_INDEX labels
    there (no grounding loss)."""
    start = chunk_span(labels, n_actions)[:, :1] - n_grounding
    pos = torch.arange(labels.shape[1], device=labels.device)[None]
    return (labels != IGNORE_INDEX) & (pos >= start) & (pos < start + n_grounding)


# -- predictions -----------------------------------------------------------------------------------
@dataclass
class ActionPrediction:
    """One predicted action (or action chunk) per batch row: robot units, normalized [-1, 1], token ids.

    Shapes are [B, D] for single-step token models (OpenVLA) and [B, K, D] for models trained with
    action chunks of K steps (`ActionLayout.chunk_size` > 1) and for continuous heads (K = 1 included).
    `vla.model.policy.Policy` always returns [B, K, D].
    """

    actions: np.ndarray  # [B, D] or [B, K, D] float64
    normalized: np.ndarray  # [B, D] or [B, K, D] float64
    token_ids: np.ndarray | None  # [B, D] or [B, K, D] int64; None for continuous heads
    prompt_ids: list[list[int]]  # each row's prompt ids as the processor gave them (no padding)
    input_ids: list[list[int]]  # what decoding started from: the prompt ids plus the appended '▁'
    # [B, G] in [-1, 1]: what a model trained with G grounding tokens wrote before the actions; [B, 0]
    # for other models.
    grounding: np.ndarray | None = None


def split_prediction(
    tokenizer: ActionTokenizer,
    token_ids: np.ndarray,
    rows: list[list[int]],
    prompts: list[list[int]],
    stats: dict[str, Any],
    layout: ActionLayout,
) -> ActionPrediction:
    """Generated ids [B, G + K * D] (after `stop_at_eos` where decoding was free) -> the prediction:
    the first G are grounding tokens, the rest the action chunk."""
    n_dims, n_ground = len(stats["q01"]), layout.grounding
    grounding = tokenizer.decode(token_ids[:, :n_ground])
    token_ids = token_ids[:, n_ground:]
    if layout.chunk_size > 1:
        token_ids = token_ids.reshape(len(rows), layout.chunk_size, n_dims)
    normalized = tokenizer.decode(token_ids)
    return ActionPrediction(unnormalize(normalized, stats), normalized, token_ids, prompts, rows, grounding)


def stop_at_eos(rows: list[list[int]], token_ids: np.ndarray, eos: int) -> np.ndarray:
    """HF `generate` stops a row at `</s>`; OpenVLA then takes the last D ids of the whole
    sequence, prompt included. Reproduce that per row."""
    n = token_ids.shape[1]
    out = token_ids.copy()
    for i, row in enumerate(token_ids):
        hits = np.flatnonzero(row == eos)
        if hits.size and hits[0] < n - 1:
            out[i] = np.asarray(rows[i] + row[: hits[0] + 1].tolist())[-n:]
    return out


def decoding_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, empty_token_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's prompt ids without padding, and the ids decoding starts from: the prompt with the
    '▁' token appended unless it already ends with it (OpenVLA's `predict_action`)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    prompts = [
        [t for t, k in zip(ids, keep) if k] for ids, keep in zip(input_ids.tolist(), attention_mask.tolist())
    ]
    rows = [ids if ids[-1] == empty_token_id else [*ids, empty_token_id] for ids in prompts]
    return prompts, rows
