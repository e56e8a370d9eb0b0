"""Episodes -> OpenVLA training samples: prompt ids, pixel values and action-token labels.

A sample is step t of an episode. Its token sequence is the one OpenVLA trains on,
`<s> In: What action should the robot take to {instruction}?\\nOut: ▁ <action tokens> </s>`, with the
loss only on the action tokens and `</s>` (OpenVLA masks everything before them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vla.action_tokenizer import ActionTokenizer, normalize
from vla.data.episodes import Episode
from vla.modeling import IGNORE_INDEX
from vla.processing import OpenVLAProcessor, build_prompt


class VLADataset(Dataset):
    """Every step of every episode, as a training sample."""

    def __init__(
        self,
        episodes: Sequence[Episode],
        processor: OpenVLAProcessor,
        action_tokenizer: ActionTokenizer,
        action_stats: dict[str, Any],
    ):
        self.episodes = list(episodes)
        self.processor = processor
        self.action_tokenizer = action_tokenizer
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(ep.num_steps)]
        # Tokenize each episode's actions and prompt once.
        self.action_tokens = [
            action_tokenizer.encode(normalize(ep.actions, action_stats)) for ep in self.episodes
        ]
        tokenizer = processor.tokenizer
        empty, eos = processor.empty_token_id, tokenizer.eos_token_id
        self.prompt_ids = []
        for ep in self.episodes:
            ids = tokenizer(build_prompt(ep.instruction))["input_ids"]
            self.prompt_ids.append([*ids, empty] if ids[-1] != empty else ids)
        self.eos = eos

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, t = self.index[i]
        episode = self.episodes[e]
        prompt = self.prompt_ids[e]
        actions = self.action_tokens[e][t].tolist()
        ids = [*prompt, *actions, self.eos]
        labels = [IGNORE_INDEX] * len(prompt) + [*actions, self.eos]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "pixel_values": self.processor.image_transform(episode.frame(t)),
            "episode": e,
            "step": t,
        }


def collate(samples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; padding is masked and carries no loss."""
    n = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), n), dtype=torch.long)
    for i, s in enumerate(samples):
        k = len(s["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = s["input_ids"], s["labels"], 1
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "episode": torch.tensor([s["episode"] for s in samples]),
        "step": torch.tensor([s["step"] for s in samples]),
    }
