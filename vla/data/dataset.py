"""Episodes -> OpenVLA training samples: prompt ids, pixel values and action-token labels.

A sample is step t of an episode: OpenVLA's prompt for its instruction, then (grounding tokens and)
the action tokens of steps t..t+K-1, then `</s>`, laid out by `vla.model.layout.encode_sample` (the
one place that knows the layout; K = 1 without grounding is OpenVLA's own sample).

Pixels: the frame at the model's input size (from the image cache, or decoded and resized here), then
the training augmentation (train split) or the model's centre crop (every other split). Samples carry
it as uint8 `images` [H, W, 3]; the training step normalizes whole batches
(`ImageTransform.normalize_batch`, what `VLAModule.forward` does), so loading does no float arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vla.data.augment import FrameAugment, sample_seed
from vla.data.cache import FrameCache
from vla.data.episodes import Episode
from vla.model.action_tokenizer import ActionTokenizer, normalize
from vla.model.layout import IGNORE_INDEX, chunk_steps, encode_sample
from vla.model.processing import ImageTransform, OpenVLAProcessor, build_prompt
from vla.model.proprio import normalize_state


class SampleImages:
    """The pixels of each training sample, as uint8 [H, W, 3] at the model's input size.

    Frame t of episode e (from the frame cache, or decoded and resized here), then the training
    augmentation seeded from (seed, epoch, index), or the model's centre crop when there is none.
    `VLADataset` draws its images from here, and so does `scripts/inspect_data.py`'s sample sheet: what
    the sheet shows is what training sample `index` of `epoch` saw.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        transform: ImageTransform,
        *,
        frames: FrameCache | None = None,
        augment: FrameAugment | None = None,
        seed: int = 0,
    ):
        if frames is not None and len(frames) != len(episodes):
            raise ValueError(f"frame cache holds {len(frames)} episodes for {len(episodes)} episodes")
        self.episodes = list(episodes)
        self.transform = transform
        self.frames = frames
        self.augment = augment
        self.seed = seed

    def frame(self, e: int, t: int) -> np.ndarray:
        """Frame t of episode e, uint8 at the model's input size, before augmentation."""
        if self.frames is not None:
            return self.frames[e][t]
        return self.transform.resize(self.episodes[e].frame(t))

    def __call__(self, e: int, t: int, epoch: int, index: int) -> np.ndarray:
        """Augmented (seeded by this sample) or centre-cropped as the model's processor does."""
        frame = self.frame(e, t)
        if self.augment is not None:
            # One frame per sample: the chunk's shared augmentation parameters hold trivially.
            return self.augment([frame], sample_seed(self.seed, epoch, index))[0]
        return self.transform.center_crop(frame)


def is_idle(tokens: np.ndarray, t: int, chunk_size: int) -> bool:
    """Whether step t of an episode (action tokens [T, D]) is a no-op: every action of its chunk has the
    tokens of the action before it, so the robot holds still at the model's resolution. Step 0 never is."""
    steps, _ = chunk_steps(t, len(tokens), chunk_size)
    return t > 0 and bool((tokens[steps] == tokens[t - 1]).all())


class VLADataset(Dataset):
    """Every step of every episode, as a training sample (with `drop_idle`, all but the no-op steps of
    `is_idle`, as OpenVLA leaves LIBERO's no-op actions out of fine-tuning).

    Index it with `i` or with `(epoch, i)` (what the training sampler yields): the augmentation of a
    sample is seeded from (seed, epoch, i), so it does not depend on worker or batch order.

    `grounding`: per episode, values in [-1, 1] (`vla.data.grounding`) whose tokens go between the
    prompt and the action chunk, in the inputs and the labels. An episode without them (NaN) gets the
    middle bin's tokens as inputs and no grounding labels, unless `teach_missing_grounding`: then those
    tokens are its labels too, so a model that writes its grounding (token head, or the l1 head's
    grounding tokens first) learns to write them for such instructions, the inputs its actions saw.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        processor: OpenVLAProcessor,
        action_tokenizer: ActionTokenizer,
        action_stats: dict[str, Any],
        *,
        chunk_size: int = 1,
        frames: FrameCache | None = None,
        augment: FrameAugment | None = None,
        seed: int = 0,
        drop_idle: bool = False,
        grounding: Sequence[np.ndarray] | None = None,
        state_stats: dict[str, Any] | None = None,
        teach_missing_grounding: bool = False,
        step_positions: int | None = None,
    ):
        """`step_positions`: the chunk positions per step that a sample's ids hold (None: one per
        action value, D; 1 for a continuous head with `chunk_positions="steps"`, which reads placeholders
        there, so the ids hold the step's first action token)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.episodes = list(episodes)
        self.processor = processor
        self.action_tokenizer = action_tokenizer
        self.chunk_size = chunk_size
        self.step_positions = step_positions
        self.images = SampleImages(
            self.episodes, processor.image_transform, frames=frames, augment=augment, seed=seed
        )
        # Normalize and tokenize each episode's actions once, and each distinct instruction once. Samples
        # carry both: the token layout (input ids, labels) and the chunk in [-1, 1] (`actions`), for a
        # head that regresses actions rather than classifying bins.
        normalized = [normalize(ep.actions, action_stats) for ep in self.episodes]  # float64, as OpenVLA bins
        self.action_tokens = [action_tokenizer.encode(actions) for actions in normalized]
        self.normalized = [actions.astype(np.float32) for actions in normalized]
        # The robot state at each step, normalized with the proprio statistics (`state_stats`: q01/q99
        # of the statistics key's `proprio`), for a model with a state input; else [T, 0].
        self.states = [
            normalize_state(ep.states, state_stats)
            if state_stats is not None
            else np.zeros((ep.num_steps, 0), dtype=np.float32)
            for ep in self.episodes
        ]
        # Grounding values per episode (vla.data.grounding), tokenized like actions; they come first. A
        # continuous head reads placeholders there and regresses the values (NaN: the episode has none).
        values = grounding if grounding is not None else [np.zeros(0)] * len(self.episodes)
        self.grounding = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
        self.grounding_tokens = [
            action_tokenizer.encode(np.nan_to_num(v.astype(np.float64))).astype(np.int64).reshape(-1)
            for v in self.grounding
        ]
        self.teach_missing_grounding = teach_missing_grounding
        if len(self.grounding_tokens) != len(self.episodes):
            raise ValueError(f"{len(self.grounding_tokens)} grounding rows for {len(self.episodes)} episodes")
        self.index = [
            (e, t)
            for e, ep in enumerate(self.episodes)
            for t in range(ep.num_steps)
            if not (drop_idle and is_idle(self.action_tokens[e], t, chunk_size))
        ]
        self.idle_dropped = sum(ep.num_steps for ep in self.episodes) - len(self.index)
        self.empty = processor.empty_token_id
        self.eos = processor.tokenizer.eos_token_id
        self.prompt_ids: dict[str, np.ndarray] = {}
        for ep in self.episodes:
            for instruction in {ep.instruction, *(ep.step_instructions or [])}:
                self._prompt(instruction)

    def _prompt(self, instruction: str) -> np.ndarray:
        if instruction not in self.prompt_ids:
            ids = self.processor.tokenizer(build_prompt(instruction))["input_ids"]
            ids = [*ids, self.empty] if ids[-1] != self.empty else ids
            self.prompt_ids[instruction] = np.array(ids, dtype=np.int64)
        return self.prompt_ids[instruction]

    def __len__(self) -> int:
        return len(self.index)

    def image(self, e: int, t: int, epoch: int, i: int) -> torch.Tensor:
        """uint8 [H, W, 3] of sample i in `epoch` (`SampleImages`)."""
        # A numpy copy (the frame may be a read-only view of the memory-mapped cache): torch.tensor on a
        # memmap takes a slow generic path.
        return torch.from_numpy(np.array(self.images(e, t, epoch, i), dtype=np.uint8))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        e, t = self.index[i]
        prompt = self._prompt(self.episodes[e].instruction_at(t))
        tokens = self.action_tokens[e]  # int64 [T, D]
        steps, real = chunk_steps(t, len(tokens), self.chunk_size)
        chunk = tokens[steps][:, : self.step_positions]  # [K, D], or [K, 1] for one position per step
        input_ids, labels = encode_sample(prompt, self.grounding_tokens[e], chunk, real, self.eos)
        if not self.teach_missing_grounding:  # an episode without grounding values: no grounding loss
            unknown = np.isnan(self.grounding[e])
            labels[len(prompt) : len(prompt) + unknown.size][unknown] = IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "actions": torch.from_numpy(self.normalized[e][steps]),  # float32 [K, D] in [-1, 1]
            "action_steps": torch.tensor(real),  # bool [K]: real steps (not padding past the end)
            "states": torch.from_numpy(self.states[e][t]),  # float32 [S] normalized robot state ([0]: none)
            "grounding": torch.from_numpy(self.grounding[e]),  # float32 [G] in [-1, 1] (NaN: unknown)
            "images": self.image(e, t, epoch, i),
            "episode": e,
            "step": t,
        }


def collate(samples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; padding is masked and carries no loss. `images` stay uint8.

    Built with numpy: per-sample torch indexing costs more than loading a cached sample."""
    n = max(len(s["input_ids"]) for s in samples)
    ids = np.full((len(samples), n), pad_id, dtype=np.int64)
    labels = np.full((len(samples), n), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(samples), n), dtype=np.int64)
    for i, s in enumerate(samples):
        k = len(s["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = s["input_ids"].numpy(), s["labels"].numpy(), 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
        "actions": torch.from_numpy(np.stack([s["actions"].numpy() for s in samples])),
        "action_steps": torch.from_numpy(np.stack([s["action_steps"].numpy() for s in samples])),
        "states": torch.from_numpy(np.stack([s["states"].numpy() for s in samples])),
        "grounding": torch.from_numpy(np.stack([s["grounding"].numpy() for s in samples])),
        "images": torch.from_numpy(np.stack([s["images"].numpy() for s in samples])),
        "episode": torch.tensor([s["episode"] for s in samples]),
        "step": torch.tensor([s["step"] for s in samples]),
    }
