"""The LightningModule: the action head's loss (cross-entropy on action tokens, or L1 on continuous
actions), the same action metrics for every head, AdamW + cosine."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from vla.config import OptimConfig
from vla.model.action_tokenizer import unnormalize
from vla.training.adapters import under_modules, unwrap


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def capture_rng_states() -> dict[str, Any]:
    """Every global generator a training step may draw from, as tensors and plain Python values
    (a checkpoint loads with torch's weights_only unpickler)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },  # fmt: skip
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def fused_adamw_supported(params: list[torch.Tensor], precision: str) -> bool:
    """Whether to use torch's fused AdamW kernel: floating-point tensors on the CPU or a CUDA device,
    trained in full precision. It is the same update as the per-tensor loop in one kernel per step
    (on the tiny default, 130 tensors on one core, ~20 ms less a step). Lightning's mixed-precision
    plugin refuses gradient clipping with a fused optimizer, so `*-mixed` keeps the loop."""
    return (
        precision in ("32-true", "64-true")
        and bool(params)
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    )


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
        self._pending_rng: dict[str, Any] | None = None  # a resumed checkpoint's, for the next step

    @property
    def vla(self):
        return unwrap(self.model)

    def forward(self, batch: dict[str, torch.Tensor], with_loss: bool = True):
        """The model's output for a collated batch as its head wants it (logits, with the language
        model's loss when `with_loss`; or final hidden states); its uint8 `images` are normalized here,
        on the device."""
        vla, head = self.vla, self.vla.head
        pixel_values = vla.processor.image_transform.normalize_batch(batch["images"])
        # The head decides what the model reads (placeholders at the chunk for parallel decoding).
        input_ids = head.training_inputs(batch["input_ids"], batch["labels"], self.action_dim)
        kwargs = {"proprio": batch["states"]} if vla.proprio_dim else {}
        if head.output == "hidden":
            kwargs["output"] = "hidden"
        return self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"] if with_loss and head.output == "logits" else None,
            **kwargs,
        )

    @property
    def action_dim(self) -> int:
        return len(self.action_stats["q01"])

    def grounding_weight_at(self, step: int) -> float:
        """The loss weight of a grounding token at optimizer step `step`."""
        steps = self.grounding_weight_steps
        return self.grounding_weight if steps is None or step < steps else 1.0

    def noisy_action_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` with teacher-forcing noise on the chunk's inputs (`TokenHead.noisy_inputs`)."""
        ids = self.vla.head.noisy_inputs(
            batch["input_ids"], batch["labels"], self.action_dim, self.token_noise, self.token_noise_bins
        )
        return {**batch, "input_ids": ids}

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's training loss of a batch (teacher-forcing noise applied) and, with grounding
        tokens, their mean cross-entropy."""
        head = self.vla.head
        if self.token_noise > 0:
            batch = self.noisy_action_inputs(batch)
        out = self(batch, with_loss=head.needs_model_loss)
        weight = self.grounding_weight_at(self.global_step)
        optim = self.optim
        return head.loss(out, batch, weight, regression=optim.action_loss, huber_delta=optim.huber_delta)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        n = batch["input_ids"].shape[0]
        loss, grounding_loss = self.training_loss(batch)
        if grounding_loss is not None:
            self.log("train/grounding_loss", grounding_loss, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        now = time.perf_counter()
        if self._tick is not None:
            self.log("train/samples_per_s", n / (now - self._tick), prog_bar=True, batch_size=n)
        self._tick = now
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        head = self.vla.head
        out = self(batch)
        n = batch["input_ids"].shape[0]
        self.log("val/loss", head.validation_loss(out, batch), prog_bar=True, batch_size=n, sync_dist=True)
        # The head's teacher-forced chunk [B, K, D] (normalized), which steps are real, its own metrics.
        result = head.teacher_forced(out, batch, self.action_dim)
        pred_norm, true_norm, valid = result.pred, result.true, result.valid
        for name, value in result.metrics.items():
            if not np.isnan(value):  # NaN: nothing to measure in this batch (no grounding values in it)
                self.log(f"val/{name}", value, batch_size=n, sync_dist=True)
        # Means over the real chunk steps only (padding repeats the last action and has no loss).
        l1 = float(np.abs(pred_norm - true_norm)[valid].mean())
        self.log("val/action_l1", l1, batch_size=n, sync_dist=True)
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
            params,
            lr=self.optim.lr,
            weight_decay=self.optim.weight_decay,
            betas=tuple(self.optim.betas),
            fused=fused_adamw_supported(params, self.trainer.precision if self._trainer else "32-true"),
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
        not the 14 GB of the base. Also the random states the next steps draw from (LoRA dropout and
        data.token_noise draw from torch's global generator), so that a resumed run is the same run."""
        trainable = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng_states"] = capture_rng_states()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not in on_load_checkpoint: Lightning runs the sanity validation and builds the
        # resumed loaders in between. Our loaders draw from their own generators (ResumableLoader), so
        # nothing between a checkpoint and the next step moves the global ones in the uninterrupted run.
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is non-strict (the base is not in the file), so check the trainable set here."""
        self._pending_rng = checkpoint.get("rng_states")
        saved, trainable = set(checkpoint["state_dict"]), self._trainable_names()
        # Checkpoints of earlier versions also hold the parts the forward never runs, at their initial
        # values (they got no gradient): those load as they are.
        unused = self.vla.unused_modules
        saved = {k for k in saved if k in trainable or not under_modules(k, unused)}
        if saved != trainable:
            missing, unexpected = sorted(trainable - saved), sorted(saved - trainable)
            raise RuntimeError(
                "the checkpoint's trainable tensors do not match this run's adapter (was it made with "
                f"other lora/model settings?): {len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}"
            )
