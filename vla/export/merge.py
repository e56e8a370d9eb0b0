"""The export stage: a training run -> a self-contained merged OpenVLA folder, ONNX graphs, checks.

<out>/model/        OpenVLA format, adapters merged, config.json norm_stats = the fine-tune's statistics
<out>/onnx/         prefix.onnx + decode.onnx (KV cache), their int8 twins, policy.json (TensorRT
                    engines *.plan where tensorrt imports)
<out>/heldout.npz   the held-out frames and instructions the checks ran on (the benchmark reuses them)
<out>/export.json   what was checked and measured; written last, so its presence means a finished export

Every folder is written into a temporary sibling and renamed into place: an interrupted export leaves
no folder that looks complete.

The model, adapter, quantization and data settings come from the run's config.yaml; `model.*`,
`data.*` (and harmless `lora.*`/`quantization.*`) keys given to scripts/export.py are merged on top
(`vla.training.runs.load_train_config`). Both models come from `vla.training.runs.load_trained`, the loader `load_run`
uses too: the merged-vs-adapter check compares the merged model with the model as trained (for
QLoRA: base quantized in model.dtype, PEFT's k-bit preparation upcasting every other weight to
float32, adapter on top). Dtypes of the merged model:
- LoRA/DoRA on a base in model.dtype: merged in model.dtype (bf16 merges round W + BA to bf16).
- QLoRA (nf4/int8): float32. The decoder's linear weights are the dequantized values training's
  matmuls used (NF4 x scales, rounded to the compute dtype model.dtype) plus the adapter's delta; all
  other weights were float32 in training already. For model.dtype=bfloat16/float16 one difference
  remains: training ran the quantized matmuls on activations cast to that dtype, the merged model
  runs them in float32. The token check shows whether that changes an action token.
Overriding model.dtype changes the base of both models: the check then is not against the model as
trained, and the export says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import RUN_OVERRIDE_GROUPS, ExportConfig, TrainConfig
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt
from vla.training.runs import load_train_config, load_trained

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """A check of the export failed (merged vs adapter tokens, ONNX parity); the message says which."""


@dataclass
class HeldOut:
    """Frames (HxWx3 uint8) and instructions that no training step saw."""

    images: list[np.ndarray]
    instructions: list[str]

    def save(self, path: Path) -> None:
        arrays = {f"image_{i}": img for i, img in enumerate(self.images)}
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, instructions=np.asarray(self.instructions, dtype=str), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> HeldOut:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no held-out frames (written by scripts/export.py)")
        with np.load(path, allow_pickle=False) as data:
            instructions = [str(t) for t in data["instructions"]]
            return cls([data[f"image_{i}"] for i in range(len(instructions))], instructions)


def held_out_samples(train_cfg: TrainConfig, n: int, source: str) -> HeldOut:
    """`n` frames spread evenly over the run's validation episodes (the same split as training), or
    `n` random images with the sample tasks' instructions (`source="random"`, when the data is gone)."""
    if source == "random":
        rng = np.random.default_rng(0)
        size = train_cfg.model.architecture.image_size
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
        return HeldOut(images, ["reach the red ball with the left hand"] * n)
    from vla.data.datamodule import VLADataModule
    from vla.sim.episodes import resolve_sample_data

    data = resolve_sample_data(train_cfg.data, train_cfg.sim, train_cfg.paths.cache_dir)
    datamodule = VLADataModule(data, cache_dir=train_cfg.paths.cache_dir)
    datamodule.prepare()
    steps = [(ep, t) for ep in datamodule.val_episodes for t in range(ep.num_steps)]
    picks = np.unique(np.linspace(0, len(steps) - 1, n).round().astype(int))
    return HeldOut([steps[i][0].frame(steps[i][1]) for i in picks], [steps[i][0].instruction for i in picks])


def action_tokens(policy: Any, samples: HeldOut) -> np.ndarray:
    """Action tokens [N, n_tokens] for each held-out frame, one frame per call (batch 1, as deployed)."""
    rows = [
        policy.predict([img], [text]).token_ids.reshape(1, -1)
        for img, text in zip(samples.images, samples.instructions)
    ]
    return np.concatenate(rows)


def check_same_tokens(expected: np.ndarray, got: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((expected != got).any(axis=1))
    if bad.size:
        raise ExportError(
            f"{what}: action tokens differ on {bad.size} of {len(expected)} held-out samples "
            f"(first: sample {bad[0]}, expected {expected[bad[0]].tolist()}, got {got[bad[0]].tolist()})"
        )


@torch.no_grad()
def onnx_parity(model: OpenVLA, policy: Any, samples: HeldOut, torch_tokens: np.ndarray) -> float:
    """ONNX tokens must equal PyTorch's; returns the max abs logit difference over every decoded
    position. The PyTorch logits come from one uncached forward pass over prompt + image + the decoded
    tokens, a reference independent of the KV-cache path the ONNX graphs take."""
    worst, onnx_tokens = 0.0, []
    for img, text in zip(samples.images, samples.instructions):
        inputs = policy.processor([img], [build_prompt(text)])
        pred, logits = policy.predict_action(**inputs, return_logits=True)
        tokens = pred.token_ids.reshape(-1)
        onnx_tokens.append(tokens)
        ids = torch.tensor([[*pred.input_ids[0], *tokens[:-1].tolist()]])
        ref = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -len(tokens) :]
        worst = max(worst, float(np.abs(ref.float().numpy() - logits[0]).max()))
    check_same_tokens(torch_tokens, np.stack(onnx_tokens), "ONNX float32 vs PyTorch float32")
    return worst


def export_run(cfg: ExportConfig) -> dict[str, Any]:
    """Merge, save, export and check; returns the report (also written to <out>/export.json)."""
    from vla.export.onnx import _float32_copy, build_tensorrt_engines, export_onnx, quantize_int8
    from vla.inference.onnx_policy import OnnxPolicy

    start = time.perf_counter()
    run_dir, out = Path(cfg.run), Path(cfg.out_dir)
    overrides = {group: getattr(cfg, group) for group in RUN_OVERRIDE_GROUPS}
    train_cfg = load_train_config(run_dir, overrides)
    trained_dtype = load_train_config(run_dir).model.dtype
    if train_cfg.model.dtype != trained_dtype:
        print(f"model.dtype={train_cfg.model.dtype} (the run trained with {trained_dtype}): the merge "
              f"check compares against the adapter on a {train_cfg.model.dtype} base, not the model as trained")  # fmt: skip
    samples = held_out_samples(train_cfg, cfg.held_out, cfg.samples_from)
    full = (run_dir / "model" / "config.json").is_file()  # lora=full: nothing to merge
    # One model at a time (a 7B base twice would not fit): the model as trained first, then merged.
    adapter_tokens = None if full else action_tokens(load_trained(run_dir, train_cfg, merge=False), samples)
    merged = load_trained(run_dir, train_cfg, merge=True)
    report: dict[str, Any] = {
        "run": str(run_dir),
        "overrides": {group: values for group, values in overrides.items() if values},
        "held_out": len(samples.images),
        "samples_from": cfg.samples_from,
        # The scene a policy trained on simulator data expects (evaluate.py and load_policy read it).
        "sim_scene": train_cfg.data.sim_scene(),
    }
    key = train_cfg.data.dataset_key
    if key not in merged.norm_stats:
        raise ExportError(f"{run_dir / 'dataset_statistics.json'}: no statistics under {key!r}")

    merged_tokens = action_tokens(merged, samples)
    if adapter_tokens is not None:
        check_same_tokens(adapter_tokens, merged_tokens, "merged vs adapter model")
        report["merge"] = "merged tokens identical to the adapter model's"
    else:
        report["merge"] = "lora=full: no adapter to merge"
    model_dir = merged.save_pretrained(out / "model")
    reloaded = OpenVLA.from_pretrained(model_dir)
    check_same_tokens(merged_tokens, action_tokens(reloaded, samples), f"{model_dir} reloaded vs merged")
    saved = json.loads((model_dir / "config.json").read_text())
    report.update(model_dir=str(model_dir), norm_stats_keys=sorted(saved["norm_stats"]), dataset_key=key)
    samples.save(out / "heldout.npz")

    if cfg.onnx:
        onnx_dir = export_onnx(merged, out / "onnx", cfg.opset)
        fp32 = merged if next(merged.parameters()).dtype == torch.float32 else _float32_copy(merged)
        fp32_tokens = merged_tokens if fp32 is merged else action_tokens(fp32, samples)
        policy = OnnxPolicy(model_dir, onnx_dir, "fp32", cfg.threads)
        diff = onnx_parity(fp32, policy, samples, fp32_tokens)
        print(f"ONNX float32 vs PyTorch float32: identical action tokens on {len(samples.images)} held-out "
              f"samples; max abs logit difference {diff:.2e} (tolerance {cfg.logits_atol:.0e})")  # fmt: skip
        if diff > cfg.logits_atol:
            raise ExportError(
                f"ONNX logits differ from PyTorch by {diff:.2e} > logits_atol={cfg.logits_atol}"
            )
        report["onnx"] = {"dir": str(onnx_dir), "tokens_identical": True, "max_abs_logit_diff": diff}
        if cfg.int8:
            quantize_int8(onnx_dir)
            int8_tokens = action_tokens(OnnxPolicy(model_dir, onnx_dir, "int8", cfg.threads), samples)
            agreement = float((int8_tokens == fp32_tokens).mean())
            print(f"ONNX int8 vs float32: {100 * agreement:.1f}% of action tokens agree")
            report["onnx"]["int8_token_agreement"] = agreement
        engines = build_tensorrt_engines(onnx_dir) if cfg.tensorrt else None
        if engines is None and cfg.tensorrt:
            print("TensorRT: skipped (tensorrt does not import on this machine)")
        report["onnx"]["tensorrt_engines"] = [str(e) for e in engines or []]
    report["wall_time_s"] = time.perf_counter() - start
    tmp = out / ".export.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "export.json")
    return report
