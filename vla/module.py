"""The LightningModule: next-token cross-entropy on action tokens, action metrics, AdamW + cosine."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from vla.action_tokenizer import unnormalize
from vla.adapters import unwrap
from vla.config import OptimConfig


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class VLAModule(L.LightningModule):
    def __init__(self, model: nn.Module, optim: OptimConfig, action_stats: dict[str, Any], max_steps: int):
        super().__init__()
        self.model = model
        self.optim = optim
        self.action_stats = action_stats
        self.max_steps = max_steps
        self.val_records: list[dict[str, np.ndarray]] = []
        self._tick: float | None = None
        # Checkpoints hold the trainable tensors only (on_save_checkpoint); on_load_checkpoint checks them.
        self.strict_loading = False

    @property
    def vla(self):
        return unwrap(self.model)

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        n = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=n)
        now = time.perf_counter()
        if self._tick is not None:
            self.log("train/samples_per_s", n / (now - self._tick), prog_bar=True, batch_size=n)
        self._tick = now
        return out.loss

    def _action_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Predictions and targets at the action-token positions (the label row minus </s>)."""
        n_patches = logits.shape[1] - labels.shape[1]
        # Text token j is predicted at multimodal position n_patches + j - 1.
        text_logits = logits[:, n_patches : n_patches + labels.shape[1] - 1]
        targets = labels[:, 1:]
        tok = self.vla.action_tokenizer
        is_action = (targets >= tok.first_action_token) & (targets <= tok.last_action_token)
        return text_logits.argmax(-1), targets, is_action

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        n = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, prog_bar=True, batch_size=n, sync_dist=True)
        pred, target, is_action = self._action_logits(out.logits, batch["labels"])
        d = int(is_action[0].sum())
        pred_ids = pred[is_action].view(n, d).cpu().numpy()
        true_ids = target[is_action].view(n, d).cpu().numpy()
        tok = self.vla.action_tokenizer
        acc = float((pred_ids == true_ids).mean())
        pred_norm, true_norm = tok.decode(pred_ids), tok.decode(true_ids)
        self.log("val/action_token_acc", acc, batch_size=n, sync_dist=True)
        self.log("val/action_l1", float(np.abs(pred_norm - true_norm).mean()), batch_size=n, sync_dist=True)
        self.val_records.append(
            {
                "episode": batch["episode"].cpu().numpy(),
                "step": batch["step"].cpu().numpy(),
                "pred": unnormalize(pred_norm, self.action_stats),
                "true": unnormalize(true_norm, self.action_stats),
            }
        )

    def on_validation_epoch_start(self) -> None:
        self.val_records = []

    def on_validation_epoch_end(self) -> None:
        if not self.val_records:
            return
        err = np.abs(np.concatenate([r["pred"] - r["true"] for r in self.val_records]))
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
