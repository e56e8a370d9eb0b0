"""The LightningModule: next-token cross-entropy on action tokens, action metrics, AdamW + cosine."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from vla.config import OptimConfig
from vla.model.action_tokenizer import unnormalize
from vla.model.layout import IGNORE_INDEX, chunk_span, grounding_positions
from vla.training.adapters import unwrap


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class VLAModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig,
        action_stats: dict[str, Any],
        max_steps: int,
        grounding_weight: float = 1.0,
        grounding_weight_steps: int | None = None,
        token_noise: float = 0.0,
        token_noise_bins: int = 8,
    ):
        super().__init__()
        self.model = model
        self.optim = optim
        # Loss weight of grounding tokens (data.grounding_weight) for the first grounding_weight_steps
        # optimizer steps (None: all of them), then 1.
        self.grounding_weight = grounding_weight
        self.grounding_weight_steps = grounding_weight_steps
        # Teacher-forcing noise on the action tokens of the inputs (data.token_noise, training only).
        self.token_noise = token_noise
        self.token_noise_bins = token_noise_bins
        self.action_stats = action_stats
        self.max_steps = max_steps
        self.val_records: list[dict[str, np.ndarray]] = []
        self._tick: float | None = None
        # Checkpoints hold the trainable tensors only (on_save_checkpoint); on_load_checkpoint checks them.
        self.strict_loading = False

    @property
    def vla(self):
        return unwrap(self.model)

    def forward(self, batch: dict[str, torch.Tensor], with_loss: bool = True):
        """Loss (with `with_loss`) and logits of a collated batch; its uint8 `images` are normalized
        here, on the device."""
        pixel_values = self.vla.processor.image_transform.normalize_batch(batch["images"])
        # The head decides what the model reads (placeholders at the chunk for parallel decoding).
        input_ids = self.vla.head.training_inputs(batch["input_ids"], batch["labels"], self.action_dim)
        return self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"] if with_loss else None,
        )

    @property
    def action_dim(self) -> int:
        return len(self.action_stats["q01"])

    def _chunk_span(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, K*D] positions of each row's action chunk (`vla.model.layout.chunk_span`)."""
        return chunk_span(labels, self.vla.action_chunk_size * self.action_dim)

    def grounding_weight_at(self, step: int) -> float:
        """The loss weight of a grounding token at optimizer step `step`."""
        steps = self.grounding_weight_steps
        return self.grounding_weight if steps is None or step < steps else 1.0

    def noisy_action_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` with each labelled action token of `input_ids` (the chunk's, `_chunk_span`; padded
        chunk steps carry no label) moved, with probability `token_noise`, by a uniform shift of
        -bins..bins and kept within the 256 action tokens; labels unchanged."""
        ids, labels = batch["input_ids"], batch["labels"]
        tokenizer = self.vla.action_tokenizer
        lo, hi = tokenizer.first_action_token, tokenizer.last_action_token
        chunk = torch.zeros_like(labels, dtype=torch.bool).scatter(1, self._chunk_span(labels), True)
        actions = chunk & (labels != IGNORE_INDEX)
        hit = actions & (torch.rand(ids.shape, device=ids.device) < self.token_noise)
        shift = torch.randint(-self.token_noise_bins, self.token_noise_bins + 1, ids.shape, device=ids.device)
        return {**batch, "input_ids": torch.where(hit, (ids + shift).clamp(lo, hi), ids)}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        head = self.vla.head
        if self.token_noise > 0:
            batch = self.noisy_action_inputs(batch)
        out = self(batch, with_loss=head.needs_model_loss)
        n = batch["input_ids"].shape[0]
        loss, grounding_loss = head.loss(out, batch["labels"], self.grounding_weight_at(self.global_step))
        if grounding_loss is not None:
            self.log("train/grounding_loss", grounding_loss, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        now = time.perf_counter()
        if self._tick is not None:
            self.log("train/samples_per_s", n / (now - self._tick), prog_bar=True, batch_size=n)
        self._tick = now
        return loss

    def _action_chunks(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted and true action-token ids [B, K, D] and which chunk steps are real [B, K].

        Each row's K*D action tokens sit right before its `</s>` (the last label that is not
        IGNORE_INDEX). Padded chunk steps have IGNORE_INDEX labels; their true ids come from the
        input ids (the repeated last action), and `valid` leaves them out of every metric.
        """
        labels = batch["labels"]
        k, d = self.vla.action_chunk_size, self.action_dim
        pred = self.vla.head.predicted_ids(logits, labels)
        span = self._chunk_span(labels)
        pred_ids = pred.gather(1, span).view(-1, k, d).cpu().numpy()
        true_ids = batch["input_ids"].gather(1, span).view(-1, k, d).cpu().numpy()
        valid = (labels.gather(1, span) != IGNORE_INDEX).view(-1, k, d).all(-1).cpu().numpy()
        return pred_ids, true_ids, valid

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        n = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, prog_bar=True, batch_size=n, sync_dist=True)
        pred_ids, true_ids, valid = self._action_chunks(out.logits, batch)
        tok = self.vla.action_tokenizer
        pred_norm, true_norm = tok.decode(pred_ids), tok.decode(true_ids)
        # Means over the real chunk steps only (padding repeats the last action and has no loss).
        acc = float((pred_ids == true_ids)[valid].mean())
        l1 = float(np.abs(pred_norm - true_norm)[valid].mean())
        self.log("val/action_token_acc", acc, batch_size=n, sync_dist=True)
        self.log("val/action_l1", l1, batch_size=n, sync_dist=True)
        if self.vla.grounding_tokens:
            # Teacher forced, as the action metrics: mean |predicted - true| of the grounding values.
            labels = batch["labels"]
            ground = grounding_positions(labels, self.vla.grounding_tokens)
            pred = self.vla.head.predicted_ids(out.logits, labels)[ground].cpu().numpy()
            true = labels[ground].cpu().numpy()
            err = float(np.abs(tok.decode(pred) - tok.decode(true)).mean())
            self.log("val/grounding_l1", err, batch_size=n, sync_dist=True)
        pred, true = unnormalize(pred_norm, self.action_stats), unnormalize(true_norm, self.action_stats)
        self.val_records.append(
            {
                "episode": batch["episode"].cpu().numpy(),
                "step": batch["step"].cpu().numpy(),
                # The plots show the action each sample is for: the chunk's first step.
                "pred": pred[:, 0],
                "true": true[:, 0],
                "abs_err": np.abs(pred - true)[valid],  # [real chunk steps, D], robot units
            }
        )

    def on_validation_epoch_start(self) -> None:
        self.val_records = []

    def on_validation_epoch_end(self) -> None:
        if not self.val_records:
            return
        err = np.concatenate([r["abs_err"] for r in self.val_records])
        for i, value in enumerate(err.mean(axis=0)):
            self.log(f"val/l1_dof/{i}", float(value), sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.optim.lr, weight_decay=self.optim.weight_decay, betas=tuple(self.optim.betas)
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step, self.optim.warmup_steps, self.max_steps, self.optim.min_lr_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints: the trainable tensors only ---------------------------------------------------
    def _trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only what training changes: the frozen base is rebuilt from its source on resume (the
        pretrained checkpoint, or the tiny model from its seed), so a 7B LoRA checkpoint is megabytes,
        not the 14 GB of the base."""
        trainable = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is non-strict (the base is not in the file), so check the trainable set here."""
        saved, trainable = set(checkpoint["state_dict"]), self._trainable_names()
        if saved != trainable:
            missing, unexpected = sorted(trainable - saved), sorted(saved - trainable)
            raise RuntimeError(
                "the checkpoint's trainable tensors do not match this run's adapter (was it made with "
                f"other lora/model settings?): {len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}"
            )
