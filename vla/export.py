"""The export stage: a training run -> a self-contained merged OpenVLA folder, ONNX graphs, checks.

<out>/model/        OpenVLA format, adapters merged, config.json norm_stats = the fine-tune's statistics
<out>/onnx/         prefix.onnx + decode.onnx (KV cache), their int8 twins, policy.json (TensorRT
                    engines *.plan where tensorrt imports)
<out>/heldout.npz   the held-out frames and instructions the checks ran on (the benchmark reuses them)
<out>/export.json   what was checked and measured; written last, so its presence means a finished export

Every folder is written into a temporary sibling and renamed into place: an interrupted export leaves
no folder that looks complete.
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
from omegaconf import OmegaConf
from torch import nn

from vla.checkpoint import DTYPES, quantize_language_model
from vla.config import ExportConfig, TrainConfig, to_object
from vla.configuration import CheckpointError
from vla.data.statistics import load_statistics
from vla.modeling import OpenVLA
from vla.processing import build_prompt

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


def load_train_config(run_dir: Path) -> TrainConfig:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{run_dir}: not a training run (no config.yaml)")
    return to_object(OmegaConf.load(config_file), TrainConfig)


def held_out_samples(train_cfg: TrainConfig, n: int, source: str, data_root: str | None) -> HeldOut:
    """`n` frames spread evenly over the run's validation episodes (the same split as training), or
    `n` random images with the sample tasks' instructions (`source="random"`, when the data is gone)."""
    if source == "random":
        rng = np.random.default_rng(0)
        size = train_cfg.model.architecture.image_size
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
        return HeldOut(images, ["reach the red ball with the left hand"] * n)
    from vla.data.datamodule import VLADataModule

    data_cfg = train_cfg.data
    if data_root is not None:
        data_cfg.root = data_root
    datamodule = VLADataModule(data_cfg, cache_dir=train_cfg.paths.cache_dir)
    datamodule.prepare()
    steps = [(ep, t) for ep in datamodule.val_episodes for t in range(ep.num_steps)]
    picks = np.unique(np.linspace(0, len(steps) - 1, n).round().astype(int))
    return HeldOut([steps[i][0].frame(steps[i][1]) for i in picks], [steps[i][0].instruction for i in picks])


def dequantize_language_model(model: OpenVLA) -> None:
    """Undo `quantize_language_model`: each bitsandbytes layer becomes an nn.Linear holding exactly the
    weights the quantized layer computes with (NF4 codes x block scales, or int8 rows x row scales)."""
    import bitsandbytes as bnb

    decoder = model.language_model.model
    for name, module in list(decoder.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dtype = module.compute_dtype or torch.float32
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight = module.weight.CB.float() * module.weight.SCB.float()[:, None] / 127
            dtype = module.bias.dtype if module.bias is not None else torch.float32
        else:
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        if module.bias is not None:
            linear.bias = nn.Parameter(module.bias.data.to(dtype), requires_grad=False)
        parent, child = name.rsplit(".", 1)
        setattr(decoder.get_submodule(parent), child, linear)
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    model.quantization = None


def _load_base(train_cfg: TrainConfig, run_dir: Path, quantized: bool) -> OpenVLA:
    source = run_dir / "base_model" if (run_dir / "base_model").is_dir() else train_cfg.model.pretrained
    if source is None:
        raise CheckpointError(f"{run_dir}: no base_model/ and the run's model.pretrained is null")
    dtype = DTYPES[train_cfg.model.dtype]
    base = OpenVLA.from_pretrained(source, dtype=dtype)
    method = train_cfg.quantization.method
    if quantized and method:
        quantize_language_model(base, method, compute_dtype=dtype)
    base.config.norm_stats = load_statistics(run_dir / "dataset_statistics.json")
    base.config.extra["constrain_action_decoding"] = bool(train_cfg.model.constrain_action_decoding)
    return base


def adapter_and_merged(run_dir: Path, train_cfg: TrainConfig) -> tuple[nn.Module, OpenVLA]:
    """The model as it was trained (base, quantized like in training, + PEFT adapter) and the merged
    model. For QLoRA the base is quantized the same way, then dequantized, then merged: the merged
    weights are the ones the adapter was trained against."""
    from peft import PeftModel

    if (run_dir / "model" / "config.json").is_file():  # lora=full: nothing to merge
        model = OpenVLA.from_pretrained(run_dir / "model")
        model.config.norm_stats = load_statistics(run_dir / "dataset_statistics.json")
        return model, model
    if not (run_dir / "adapter").is_dir():
        raise CheckpointError(f"{run_dir}: neither adapter/ nor model/ (did the training run finish?)")
    adapter = str(run_dir / "adapter")
    reference = PeftModel.from_pretrained(_load_base(train_cfg, run_dir, quantized=True), adapter).eval()
    base = _load_base(train_cfg, run_dir, quantized=True)
    if train_cfg.quantization.method:
        dequantize_language_model(base)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return reference, merged.eval()


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
    from vla.onnx_export import OnnxPolicy, _float32_copy, build_tensorrt_engines, export_onnx, quantize_int8

    start = time.perf_counter()
    run_dir, out = Path(cfg.run), Path(cfg.out_dir)
    train_cfg = load_train_config(run_dir)
    samples = held_out_samples(train_cfg, cfg.held_out, cfg.samples_from, cfg.data_root)
    reference, merged = adapter_and_merged(run_dir, train_cfg)
    report: dict[str, Any] = {
        "run": str(run_dir),
        "held_out": len(samples.images),
        "samples_from": cfg.samples_from,
    }
    key = train_cfg.data.dataset_key
    if key not in merged.norm_stats:
        raise ExportError(f"{run_dir / 'dataset_statistics.json'}: no statistics under {key!r}")

    merged_tokens = action_tokens(merged, samples)
    if reference is not merged:
        check_same_tokens(action_tokens(reference, samples), merged_tokens, "merged vs adapter model")
        report["merge"] = "merged tokens identical to the adapter model's"
    else:
        report["merge"] = "lora=full: no adapter to merge"
    del reference
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
