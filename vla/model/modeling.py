"""OpenVLA: fused ViT backbone -> MLP projector -> Llama-2, with actions decoded as tokens.

Matches `OpenVLAForActionPrediction` (openvla/openvla, prismatic/extern/hf) on current
transformers. The language model sees `[<s>] + projected patches + the rest of the prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LlamaForCausalLM

from vla.model.action_tokenizer import ActionTokenizer, action_stats, unnormalize
from vla.model.configuration import OpenVLAConfig
from vla.model.processing import ImageLike, OpenVLAProcessor, build_prompt
from vla.model.vision import VisionBackbone

IGNORE_INDEX = -100
# Llama-2's bare '▁' piece; OpenVLA hard-codes it. Models loaded with a tokenizer look it up instead.
LLAMA2_EMPTY_TOKEN_ID = 29871


class Projector(nn.Module):
    """OpenVLA's "fused-gelu-mlp" (3 layers, 4x hidden) or, for one tower, "gelu-mlp" (2 layers)."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        return self.fc3(self.act(x)) if self.fused else x


@dataclass
class ActionPrediction:
    """One predicted action (or action chunk) per batch row: robot units, normalized [-1, 1], token ids.

    Shapes are [B, D] for single-step models (OpenVLA) and [B, K, D] for models trained with action
    chunks of K steps (`OpenVLA.action_chunk_size` > 1).
    """

    actions: np.ndarray  # [B, D] or [B, K, D] float64
    normalized: np.ndarray  # [B, D] or [B, K, D] float64
    token_ids: np.ndarray  # [B, D] or [B, K, D] int64
    prompt_ids: list[list[int]]  # each row's prompt ids as the processor gave them (no padding)
    input_ids: list[list[int]]  # what decoding started from: the prompt ids plus the appended '▁'
    # [B, G] in [-1, 1]: what a model trained with data.grounding=G wrote before the actions
    # (vla.data.grounding); [B, 0] for other models.
    grounding: np.ndarray | None = None


def split_prediction(
    tokenizer: ActionTokenizer,
    token_ids: np.ndarray,
    rows: list[list[int]],
    prompts: list[list[int]],
    stats: dict[str, Any],
    n_ground: int,
    chunk: int,
) -> ActionPrediction:
    """Generated ids [B, G + K * D] (after `stop_at_eos` where decoding was free) -> the prediction:
    the first G are grounding tokens, the rest the action chunk (shared with the onnxruntime policy)."""
    n_dims = len(stats["q01"])
    grounding = tokenizer.decode(token_ids[:, :n_ground])
    token_ids = token_ids[:, n_ground:]
    if chunk > 1:
        token_ids = token_ids.reshape(len(rows), chunk, n_dims)
    normalized = tokenizer.decode(token_ids)
    return ActionPrediction(unnormalize(normalized, stats), normalized, token_ids, prompts, rows, grounding)


def stop_at_eos(rows: list[list[int]], token_ids: np.ndarray, eos: int) -> np.ndarray:
    """HF `generate` stops a row at `</s>`; OpenVLA then takes the last D ids of the whole
    sequence, prompt included. Reproduce that per row (shared with the onnxruntime policy)."""
    n = token_ids.shape[1]
    out = token_ids.copy()
    for i, row in enumerate(token_ids):
        hits = np.flatnonzero(row == eos)
        if hits.size and hits[0] < n - 1:
            out[i] = np.asarray(rows[i] + row[: hits[0] + 1].tolist())[-n:]
    return out


class OpenVLA(nn.Module):
    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        self.config = config
        towers = config.towers
        self.vision_backbone = VisionBackbone(towers, config.image_size)
        llama = config.llama_config
        self.projector = Projector(self.vision_backbone.embed_dim, llama.hidden_size, len(towers) > 1)
        self.language_model = LlamaForCausalLM(llama)
        self.action_tokenizer = ActionTokenizer(config.vocab_size, config.n_action_bins)
        self.processor: OpenVLAProcessor | None = None
        self.empty_token_id = LLAMA2_EMPTY_TOKEN_ID

    # -- loading and saving live in vla.model.checkpoint ---------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> OpenVLA:
        from vla.model.checkpoint import load_pretrained

        return load_pretrained(path_or_id, **kwargs)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Path:
        from vla.model.checkpoint import save_pretrained

        return save_pretrained(self, folder, **kwargs)

    def attach_processor(self, processor: OpenVLAProcessor) -> None:
        self.processor = processor
        self.empty_token_id = processor.empty_token_id

    # -- what PEFT's k-bit preparation expects of a transformers model ---------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the language model's activations in backward (the towers are small next to it)."""
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # -- forward -----------------------------------------------------------------------------
    @property
    def norm_stats(self) -> dict[str, Any]:
        return self.config.norm_stats or {}

    @property
    def action_chunk_size(self) -> int:
        """Future actions predicted per query (K); OpenVLA predicts one. Saved in config.json."""
        return int(self.config.extra.get("action_chunk_size", 1))

    @property
    def grounding_tokens(self) -> int:
        """Grounding tokens (G) the model writes before its actions (`data.grounding`); 0 is OpenVLA."""
        return int(self.config.extra.get("grounding_tokens", 0))

    @property
    def parallel_decoding(self) -> bool:
        """Whether the action chunk is decoded in one pass over placeholder inputs (`model.parallel_decoding`,
        OpenVLA-OFT) rather than token by token (OpenVLA)."""
        return bool(self.config.extra.get("parallel_decoding", False))

    @property
    def action_placeholder_id(self) -> int:
        """The input token at every action position of a parallel-decoding model: `<PAD>`, which no
        prompt contains."""
        return int(self.config.pad_token_id)

    @property
    def num_patches(self) -> int:
        spec = self.config.towers[0]
        return (self.config.image_size // spec.patch_size) ** 2

    def project_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.projector.fc1.weight.dtype
        return self.projector(self.vision_backbone(pixel_values.to(dtype)))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ):
        """Teacher-forced pass; `labels` (same shape as `input_ids`, -100 = no loss) give the loss."""
        patches = self.project_image(pixel_values)
        tokens = self.language_model.get_input_embeddings()(input_ids)
        embeds = torch.cat([tokens[:, :1], patches.to(tokens.dtype), tokens[:, 1:]], dim=1)
        b, n = patches.shape[:2]
        mask = None
        if attention_mask is not None:
            ones = attention_mask.new_ones(b, n)
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        mm_labels = None
        if labels is not None:
            ignore = labels.new_full((b, n), IGNORE_INDEX)
            mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=mm_labels)

    # -- action decoding ---------------------------------------------------------------------
    def _prefix_batch(
        self, rows: list[list[int]], pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Multimodal prefix embeddings, left-padded so that every row ends at the last column."""
        patches = self.project_image(pixel_values)
        embed = self.language_model.get_input_embeddings()
        device = patches.device
        seqs = []
        for i, ids in enumerate(rows):
            tok = embed(torch.tensor(ids, device=device))
            seqs.append(torch.cat([tok[:1], patches[i].to(tok.dtype), tok[1:]], dim=0))
        longest = max(s.shape[0] for s in seqs)
        if all(s.shape[0] == longest for s in seqs):
            return torch.stack(seqs), None, None
        embeds = seqs[0].new_zeros(len(seqs), longest, seqs[0].shape[1])
        mask = torch.zeros(len(seqs), longest, dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            embeds[i, longest - s.shape[0] :] = s
            mask[i, longest - s.shape[0] :] = 1
        # Positions count real tokens only, so a padded row sees exactly the positions it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, positions

    def _next_token(self, logits: torch.Tensor, constrain: bool) -> torch.Tensor:
        if constrain:
            lo, hi = self.action_tokenizer.first_action_token, self.action_tokenizer.last_action_token
            blocked = torch.full_like(logits, float("-inf"))
            blocked[:, lo : hi + 1] = 0.0
            logits = logits + blocked
        return logits.argmax(dim=-1)

    @torch.no_grad()
    def generate_action_tokens(
        self,
        rows: list[list[int]],
        pixel_values: torch.Tensor,
        n_tokens: int,
        constrain: bool,
        use_cache: bool = True,
        parallel: int = 0,
    ) -> torch.Tensor:
        """Greedy decoding of `n_tokens` tokens after each row of prompt ids; returns [B, n_tokens].

        `parallel`: the last `parallel` of them (a parallel-decoding model's action chunk) come from one
        pass over `action_placeholder_id` inputs, so none of them depends on another; the tokens before
        them are decoded one at a time, each fed back.
        """
        embeds, mask, positions = self._prefix_batch(rows, pixel_values)
        lm = self.language_model
        embed = lm.get_input_embeddings()
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=use_cache)

        def feed(new: torch.Tensor, past):
            """Run the LM on `new` input embeddings [B, n, H] after everything before; logits [B, n, V]
            are the output's last n."""
            nonlocal embeds, mask, positions
            n = new.shape[1]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], n)], dim=1)
                positions = torch.cat(
                    [positions, positions[:, -1:] + torch.arange(1, n + 1, device=new.device)], 1
                )
            if use_cache:
                new_positions = positions[:, -n:] if positions is not None else None
                return lm(
                    inputs_embeds=new,
                    attention_mask=mask,
                    position_ids=new_positions,
                    past_key_values=past,
                    use_cache=True,
                )
            embeds = torch.cat([embeds, new], dim=1)
            return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)

        generated = []
        for step in range(n_tokens - parallel):
            token = self._next_token(out.logits[:, -1].float(), constrain)
            generated.append(token)
            if step < n_tokens - 1:
                out = feed(embed(token[:, None]), out.past_key_values)
        if parallel:
            logits = out.logits[:, -1:]
            if parallel > 1:
                holders = torch.full(
                    (len(rows), parallel - 1), self.action_placeholder_id, device=logits.device
                )
                out = feed(embed(holders), out.past_key_values)
                logits = torch.cat([logits, out.logits[:, -(parallel - 1) :]], dim=1)
            generated += [self._next_token(logits[:, j].float(), constrain) for j in range(parallel)]
        return torch.stack(generated, dim=1)

    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        constrain: bool | None = None,
        use_cache: bool = True,
    ) -> ActionPrediction:
        """OpenVLA's `predict_action` for a batch of any size.

        Each row's prompt gets the '▁' token appended unless it already ends with it; greedy decoding
        produces one token per action dimension (K * D for chunked models), after the G grounding tokens
        of a model trained with them (returned as `grounding`); a parallel-decoding model produces the
        K * D action tokens in one pass. `constrain=True` restricts
        decoding to the 256 action tokens (default: the checkpoint's `constrain_action_decoding`, set for
        models trained here); without it a non-action token decodes to an extreme bin and `</s>` stops
        early, as in OpenVLA.
        """
        _, stats = action_stats(self.norm_stats, unnorm_key)
        n_dims, chunk, n_ground = len(stats["q01"]), self.action_chunk_size, self.grounding_tokens
        if constrain is None:
            constrain = bool(self.config.extra.get("constrain_action_decoding", False))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompts = [
            [t for t, k in zip(ids, keep) if k]
            for ids, keep in zip(input_ids.tolist(), attention_mask.tolist())
        ]
        rows = [ids if ids[-1] == self.empty_token_id else [*ids, self.empty_token_id] for ids in prompts]
        device = next(self.parameters()).device
        n_actions = n_dims * chunk
        tokens = self.generate_action_tokens(
            rows,
            pixel_values.to(device),
            n_ground + n_actions,
            constrain,
            use_cache,
            parallel=n_actions if self.parallel_decoding else 0,
        )
        token_ids = tokens.cpu().numpy().astype(np.int64)
        if not constrain:
            token_ids = self._stop_at_eos(rows, token_ids)
        return split_prediction(self.action_tokenizer, token_ids, rows, prompts, stats, n_ground, chunk)

    def _stop_at_eos(self, rows: list[list[int]], token_ids: np.ndarray) -> np.ndarray:
        return stop_at_eos(rows, token_ids, self.language_model.config.eos_token_id)

    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str],
        unnorm_key: str | None = None,
        constrain: bool | None = None,
    ) -> ActionPrediction:
        """Actions for raw images (PIL or HxWx3 uint8) and natural-language instructions."""
        if self.processor is None:
            raise RuntimeError("this model has no processor; load it with OpenVLA.from_pretrained")
        inputs = self.processor(images, [build_prompt(t) for t in instructions])
        return self.predict_action(**inputs, unnorm_key=unnorm_key, constrain=constrain)
