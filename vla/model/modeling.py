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

from vla.config.model import ActionLayout
from vla.model.action_tokenizer import ActionTokenizer, action_stats
from vla.model.checkpoint import load_pretrained, save_pretrained
from vla.model.configuration import OpenVLAConfig
from vla.model.heads import L1Head, TokenHead, make_head
from vla.model.layout import IGNORE_INDEX, ActionPrediction, decoding_rows, layout_from_config, store_layout
from vla.model.processing import ImageLike, OpenVLAProcessor, build_prompt
from vla.model.projectors import build_modules
from vla.model.proprio import normalize_proprio
from vla.model.vision import VisionBackbone

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
class HiddenOutput:
    """A forward pass's final hidden states [B, L, H] at the text positions (aligned with input_ids)."""

    hidden: torch.Tensor
    # The language-model head, for a continuous head that also writes tokens (grounding tokens first).
    lm_head: nn.Module | None = None


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
        # A fine-tune's own modules (vla.model.projectors), as its layout asks: None for OpenVLA.
        self.action_head: nn.Module | None = None
        self.proprio_projector: nn.Module | None = None
        self.grounding_head: nn.Module | None = None
        self.film: nn.Module | None = None
        build_modules(self, self.layout, llama.hidden_size)

    # -- loading and saving live in vla.model.checkpoint ---------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> OpenVLA:
        return load_pretrained(cls, path_or_id, **kwargs)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Path:
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
    def layout(self) -> ActionLayout:
        """The action layout saved in config.json (`vla.model.layout`): OpenVLA's own when it has none."""
        return layout_from_config(self.config.extra)

    def set_layout(self, layout: ActionLayout, seed: int = 0) -> None:
        """Record `layout` in config.json, apply its centre crop in the processor (so predict(), the
        simulator evaluation and saved models all use it) and give the model the modules it needs (a
        continuous head, a state projector: new ones drawn from `seed`, matching ones kept)."""
        store_layout(self.config.extra, layout)
        if self.processor is not None:
            self.processor.image_transform.center_crop_scale = layout.center_crop_scale
        hidden = self.language_model.config.hidden_size
        build_modules(self, layout, hidden, seed)

    @property
    def unused_modules(self) -> list[str]:
        """Modules in the checkpoint that this model's forward never runs: each tower's last block, final
        norm and pool head (OpenVLA reads the second-to-last block), and the language-model head when a
        continuous head reads the final hidden states with no tokens written before it. Training leaves
        them frozen: they would get no gradient, which also stops DDP (it expects one for each trainable
        weight)."""
        names = [
            f"vision_backbone.{tower}.{name}"
            for tower in ("featurizer", "fused_featurizer")
            if getattr(self.vision_backbone, tower) is not None
            for name in getattr(self.vision_backbone, tower).unused_modules
        ]
        layout = self.layout
        if layout.continuous and not layout.grounding_tokens_first:
            names.append("language_model.lm_head")
        return names

    @property
    def head(self) -> TokenHead | L1Head:
        """The action head of the layout: its training loss and its decoding (`vla.model.heads`)."""
        return make_head(
            self.layout,
            self.action_tokenizer,
            self.action_placeholder_id,
            self.action_head,
            self.grounding_head,
        )

    @property
    def proprio_dim(self) -> int:
        """Robot-state values the model reads (0: none)."""
        return self.layout.proprio_dim

    @property
    def action_chunk_size(self) -> int:
        """Future actions predicted per query (K); OpenVLA predicts one."""
        return self.layout.chunk_size

    @property
    def grounding_tokens(self) -> int:
        """Grounding tokens (G) the model writes before its actions; 0 is OpenVLA."""
        return self.layout.grounding

    @property
    def parallel_decoding(self) -> bool:
        """Whether the action chunk is decoded in one pass over placeholder inputs (OpenVLA-OFT)."""
        return self.layout.parallel_decoding

    @property
    def action_placeholder_id(self) -> int:
        """The input token at every action position of a parallel-decoding model: `<PAD>`, which no
        prompt contains."""
        return int(self.config.pad_token_id)

    @property
    def num_patches(self) -> int:
        spec = self.config.towers[0]
        return (self.config.image_size // spec.patch_size) ** 2

    def film_language(
        self, input_ids: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """[B, H] what FiLM conditions the vision blocks on (OpenVLA-OFT+): the mean input embedding
        (`tokens`, [B, L, H]) of each row's prompt words, leaving out `<s>`, `</s>`, `<PAD>` (the
        placeholders), action and grounding tokens and masked padding, so a training sample and a
        prediction for the same instruction give the same vector. None for a model without FiLM."""
        if self.film is None:
            return None
        cfg = self.language_model.config
        words = (
            (input_ids < self.action_tokenizer.first_action_token)
            & (input_ids != cfg.bos_token_id)
            & (input_ids != cfg.eos_token_id)
            & (input_ids != self.action_placeholder_id)
        )
        if attention_mask is not None:
            words = words & attention_mask.bool()
        weight = words.to(tokens.dtype)[..., None]
        return (tokens * weight).sum(1) / weight.sum(1).clamp(min=1.0)

    def project_image(self, pixel_values: torch.Tensor, language: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, H] projected patches; `language` ([B, H], `film_language`) for a model with FiLM."""
        dtype = self.projector.fc1.weight.dtype
        film = None
        if self.film is not None:
            if language is None:
                raise ValueError("this model has FiLM: pass the prompt's language vector (film_language)")
            film = self.film(language)
        return self.projector(self.vision_backbone(pixel_values.to(dtype), film))

    def visual_prefix(
        self, pixel_values: torch.Tensor, proprio: torch.Tensor | None, language: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, N, H] what the LLM reads between `<s>` and the prompt: the projected image patches (seen
        through the instruction with FiLM: `language`), then (for a model with a state input) the
        projected robot state as one more token."""
        patches = self.project_image(pixel_values, language)
        if not self.proprio_dim:
            return patches
        if proprio is None:
            raise ValueError(f"this model reads a {self.proprio_dim}-value robot state: pass one per row")
        if proprio.ndim != 2 or proprio.shape != (patches.shape[0], self.proprio_dim):
            raise ValueError(
                f"robot state of shape {tuple(proprio.shape)}; this model reads [batch={patches.shape[0]}, "
                f"{self.proprio_dim}]"
            )
        weight = next(self.proprio_projector.parameters())
        token = self.proprio_projector(proprio.to(weight.device, weight.dtype))
        return torch.cat([patches, token[:, None].to(patches.dtype)], dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        output: str = "logits",
    ):
        """Teacher-forced pass; `labels` (same shape as `input_ids`, -100 = no loss) give the loss.
        `output="hidden"`: the final hidden states at the text positions (`HiddenOutput`, for a
        continuous head) instead of the logits; the language-model head is not run."""
        tokens = self.language_model.get_input_embeddings()(input_ids)
        language = self.film_language(input_ids, tokens, attention_mask)
        prefix = self.visual_prefix(pixel_values, proprio, language)
        embeds = torch.cat([tokens[:, :1], prefix.to(tokens.dtype), tokens[:, 1:]], dim=1)
        b, n = prefix.shape[:2]
        mask = None
        if attention_mask is not None:
            ones = attention_mask.new_ones(b, n)
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        if output == "hidden":
            hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            text = torch.cat([hidden[:, :1], hidden[:, 1 + n :]], dim=1)
            return HiddenOutput(text, self.language_model.get_output_embeddings())
        mm_labels = None
        if labels is not None:
            ignore = labels.new_full((b, n), IGNORE_INDEX)
            mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=mm_labels)

    # -- action decoding ---------------------------------------------------------------------
    def prefix_batch(
        self, rows: list[list[int]], pixel_values: torch.Tensor, proprio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Multimodal prefix embeddings, left-padded so that every row ends at the last column."""
        embed = self.language_model.get_input_embeddings()
        device = pixel_values.device
        ids = [torch.tensor(row, device=device) for row in rows]
        toks = [embed(row) for row in ids]
        language = None
        if self.film is not None:
            language = torch.cat([self.film_language(i[None], t[None]) for i, t in zip(ids, toks)])
        patches = self.visual_prefix(pixel_values, proprio, language)
        seqs = [torch.cat([tok[:1], patches[i].to(tok.dtype), tok[1:]], dim=0) for i, tok in enumerate(toks)]
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

    def generate_action_tokens(
        self,
        rows: list[list[int]],
        pixel_values: torch.Tensor,
        n_tokens: int,
        constrain: bool,
        use_cache: bool = True,
        parallel: int = 0,
    ) -> torch.Tensor:
        """Greedy decoding of `n_tokens` tokens after each row of prompt ids (`TokenHead.generate`)."""
        return self.head.generate(self, rows, pixel_values, n_tokens, constrain, use_cache, parallel)

    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        constrain: bool | None = None,
        use_cache: bool = True,
        proprio: np.ndarray | torch.Tensor | None = None,
    ) -> ActionPrediction:
        """OpenVLA's `predict_action` for a batch of any size.

        Each row's prompt gets the '▁' token appended unless it already ends with it. Token head: greedy
        decoding produces one token per action dimension (K * D for chunked models), after the G
        grounding tokens of a model trained with them (returned as `grounding`); a parallel-decoding
        model produces the K * D action tokens in one pass. `constrain=True` restricts decoding to the
        256 action tokens (default: the layout's `constrain_decoding`, set for models trained here);
        without it a non-action token decodes to an extreme bin and `</s>` stops early, as in OpenVLA.
        Continuous head: one pass gives the [B, K, D] chunk.

        `proprio`: [B, S] robot states in robot units, for a model trained with them (normalized here
        with the statistics key's `proprio` statistics).
        """
        key, stats = action_stats(self.norm_stats, unnorm_key)
        layout = self.layout
        if constrain is None:
            constrain = layout.constrain_decoding
        prompts, rows = decoding_rows(input_ids, attention_mask, self.empty_token_id)
        device = next(self.parameters()).device
        state = None
        if self.proprio_dim:
            state = torch.from_numpy(normalize_proprio(proprio, self.norm_stats[key], len(rows), key))
            state = state.to(device)
        elif proprio is not None:
            raise ValueError("this model was not trained with a robot state; pass proprio=None")
        return self.head.predict(
            self, rows, prompts, pixel_values.to(device), state, stats, constrain, use_cache
        )

    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str],
        unnorm_key: str | None = None,
        constrain: bool | None = None,
        proprio: np.ndarray | None = None,
    ) -> ActionPrediction:
        """Actions for raw images (PIL or HxWx3 uint8), natural-language instructions and, for a model
        trained with them, robot states [B, S] in robot units."""
        if self.processor is None:
            raise RuntimeError("this model has no processor; load it with OpenVLA.from_pretrained")
        inputs = self.processor(images, [build_prompt(t) for t in instructions])
        return self.predict_action(**inputs, unnorm_key=unnorm_key, constrain=constrain, proprio=proprio)
