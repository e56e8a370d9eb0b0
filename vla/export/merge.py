"""The export stage: a training run -> a self-contained merged OpenVLA folder, ONNX graphs, checks.

<out>/model/        OpenVLA format, adapters merged (a continuous head and a state projector, trained as
                    PEFT modules_to_save, included), config.json norm_stats = the fine-tune's statistics
<out>/onnx/         the graphs (token head: prefix.onnx + decode.onnx with a KV cache; l1 head:
                    chunk.onnx), their int8 twins, policy.json (TensorRT engines *.plan where tensorrt
                    imports)
<out>/heldout.npz   the held-out frames, instructions and (for a model that reads them) robot states the
                    checks ran on (the benchmark reuses them)
<out>/export.json   what was checked and measured; written last, so its presence means a finished export

The whole export is written and checked in a temporary sibling of <out> and moved into place only
when every check passed (export.json last): an interrupted export leaves nothing at <out>.

Each check compares what the models predict for the held-out samples, one at a time (batch 1, as
deployed): for the token head the action tokens must be identical; for a continuous head the
normalized actions must agree to `actions_atol` (max abs difference). Checked: the merged model against
the adapter model as trained, the saved folder reloaded against the merged model, the float32 ONNX
graphs against the float32 PyTorch model (token head: also the logits, to `logits_atol`). The int8
graphs' agreement is reported, not required.

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
  runs them in float32. The check shows whether that changes an action token (or an action by more
  than actions_atol, which a bf16 model needs looser).
Overriding model.dtype changes the base of both models: the check then is not against the model as
trained, and the export says so.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import RUN_OVERRIDE_GROUPS, ActionLayout, ExportConfig, TrainConfig
from vla.model.action_tokenizer import action_stats
from vla.model.checkpoint import _atomic_folder, publish_permissions, write_failure
from vla.model.configuration import CheckpointError
from vla.model.layout import ActionPrediction
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt
from vla.model.projectors import MODULES, module_sizes
from vla.model.proprio import normalize_proprio, proprio_stats
from vla.training.runs import load_train_config, load_trained

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """A check of the export failed (merged vs adapter, reloaded, ONNX parity); the message says which."""


@dataclass
class HeldOut:
    """Frames (HxWx3 uint8) and instructions that no training step saw, and the robot state [N, S] of
    each frame (robot units) for a model that reads one (None otherwise)."""

    images: list[np.ndarray]
    instructions: list[str]
    states: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays = {f"image_{i}": img for i, img in enumerate(self.images)}
        if self.states is not None:
            arrays["states"] = self.states
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, instructions=np.asarray(self.instructions, dtype=str), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> HeldOut:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no held-out frames (written by scripts/export.py)")
        with np.load(path, allow_pickle=False) as data:
            instructions = [str(t) for t in data["instructions"]]
            states = data["states"] if "states" in data.files else None
            return cls([data[f"image_{i}"] for i in range(len(instructions))], instructions, states)

    def state(self, i: int) -> np.ndarray | None:
        """Sample i's state as a batch of one [1, S] (None without states)."""
        return None if self.states is None else self.states[i : i + 1]


def held_out_samples(
    train_cfg: TrainConfig, n: int, source: str, state_stats: dict[str, Any] | None = None
) -> HeldOut:
    """`n` frames spread evenly over the run's validation episodes (the same split as training), with
    their robot states when the model reads them (`model.proprio`); or `n` random images with the sample
    tasks' instructions (`source="random"`, when the data is gone) and states drawn uniformly between
    `state_stats`' q01 and q99 (the statistics key's `proprio` statistics)."""
    proprio = train_cfg.model.proprio
    if source == "random":
        rng = np.random.default_rng(0)
        size = train_cfg.model.architecture.image_size
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
        states = None
        if proprio:
            if state_stats is None:
                raise ValueError("random held-out samples for a model with a state input need state_stats")
            low, high = (np.asarray(state_stats[q], np.float64) for q in ("q01", "q99"))
            states = rng.uniform(low, high, (n, len(low))).astype(np.float32)
        return HeldOut(images, ["reach the red ball with the left hand"] * n, states)
    from vla.data.datamodule import VLADataModule
    from vla.sim.episodes import resolve_sample_data

    data = resolve_sample_data(train_cfg.data, train_cfg.sim, train_cfg.paths.cache_dir)
    datamodule = VLADataModule(data, cache_dir=train_cfg.paths.cache_dir, proprio=proprio)
    datamodule.prepare()
    steps = [(ep, t) for ep in datamodule.val_episodes for t in range(ep.num_steps)]
    picks = np.unique(np.linspace(0, len(steps) - 1, n).round().astype(int))
    states = np.stack([steps[i][0].states[steps[i][1]] for i in picks]) if proprio else None
    return HeldOut(
        [steps[i][0].frame(steps[i][1]) for i in picks], [steps[i][0].instruction for i in picks], states
    )


def predictions(model: Any, samples: HeldOut) -> list[ActionPrediction]:
    """One prediction per held-out sample, one sample per call (batch 1, as deployed). `model` has
    OpenVLA's `predict(images, instructions, proprio=)`: an OpenVLA, its PEFT wrapper, an OnnxPolicy."""
    preds = []
    for i, (img, text) in enumerate(zip(samples.images, samples.instructions)):
        kwargs = {} if samples.states is None else {"proprio": samples.state(i)}
        preds.append(model.predict([img], [text], **kwargs))
    return preds


def token_matrix(preds: list[ActionPrediction]) -> np.ndarray:
    """[N, n_tokens] the action tokens of one prediction per sample (token head)."""
    return np.concatenate([p.token_ids.reshape(1, -1) for p in preds])


def action_tokens(model: Any, samples: HeldOut) -> np.ndarray:
    """Action tokens [N, n_tokens] for each held-out sample (token head)."""
    return token_matrix(predictions(model, samples))


def normalized_actions(preds: list[ActionPrediction]) -> np.ndarray:
    """[N, K * D] normalized actions of one prediction per sample."""
    return np.concatenate([p.normalized.reshape(1, -1) for p in preds])


def check_same_tokens(expected: np.ndarray, got: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((expected != got).any(axis=1))
    if bad.size:
        raise ExportError(
            f"{what}: action tokens differ on {bad.size} of {len(expected)} held-out samples "
            f"(first: sample {bad[0]}, expected {expected[bad[0]].tolist()}, got {got[bad[0]].tolist()})"
        )


def check_same_actions(
    expected: list[ActionPrediction],
    got: list[ActionPrediction],
    layout: ActionLayout,
    atol: float,
    what: str,
) -> float:
    """The head's check of two predictions of the held-out samples: identical action tokens (token
    head), or normalized actions within `atol` (continuous head). Returns the max abs difference of the
    normalized actions."""
    diff = float(np.abs(normalized_actions(expected) - normalized_actions(got)).max())
    if not layout.continuous:
        check_same_tokens(token_matrix(expected), token_matrix(got), what)
    elif diff > atol:
        raise ExportError(f"{what}: normalized actions differ by up to {diff:.2e} > actions_atol={atol:g}")
    return diff


@torch.no_grad()
def onnx_logit_diff(model: OpenVLA, policy: Any, samples: HeldOut) -> float:
    """Token head: the max abs difference between the ONNX logits of every decoded position and one
    uncached PyTorch forward pass over prompt + image (+ state) + the decoded tokens (placeholders at
    a parallel-decoding model's chunk), a reference independent of the path the ONNX graphs take."""
    worst = 0.0
    key, stats = action_stats(model.norm_stats, None)
    parallel = model.layout.parallel_tokens(len(stats["q01"]))
    for i, (img, text) in enumerate(zip(samples.images, samples.instructions)):
        inputs = policy.processor([img], [build_prompt(text)])
        pred, logits = policy.predict_action(**inputs, return_logits=True, proprio=samples.state(i))
        tokens = pred.token_ids.reshape(-1)
        fed = tokens.tolist()
        if parallel:  # a parallel-decoding model reads placeholders at the chunk's positions
            fed[-parallel:] = [model.action_placeholder_id] * parallel
        ids = torch.tensor([[*pred.input_ids[0], *fed[:-1]]])
        state = None
        if samples.states is not None:
            state = torch.from_numpy(normalize_proprio(samples.state(i), model.norm_stats[key], 1, key))
        ref = model(input_ids=ids, pixel_values=inputs["pixel_values"], proprio=state).logits
        worst = max(worst, float(np.abs(ref[0, -len(tokens) :].float().numpy() - logits[0]).max()))
    return worst


def saved_modules(model_dir: Path) -> dict[str, int]:
    """Parameters per fine-tune module (`vla.model.projectors.MODULES`) in a saved folder's weights."""
    from safetensors import safe_open

    counts = dict.fromkeys(MODULES, 0)
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                name = key.split(".", 1)[0]
                if name in counts:
                    counts[name] += int(np.prod(f.get_slice(key).get_shape()))
    return {name: n for name, n in counts.items() if n}


def check_saved_modules(model_dir: Path, layout: ActionLayout) -> dict[str, int]:
    """The saved weights hold the modules the saved layout asks for (config.json and safetensors)."""
    saved = json.loads((model_dir / "config.json").read_text())["action_layout"]
    if (saved["head"], saved["action_dim"], saved["proprio_dim"]) != (
        layout.head,
        layout.action_dim,
        layout.proprio_dim,
    ):
        raise ExportError(f"{model_dir / 'config.json'}: action_layout {saved} is not the run's {layout}")
    modules = saved_modules(model_dir)
    wanted = [name for name, size in module_sizes(layout).items() if size]
    missing = [name for name in wanted if name not in modules]
    if missing:
        raise ExportError(f"{model_dir}: the saved weights have no {missing} (the layout needs them)")
    return modules


def export_run(cfg: ExportConfig) -> dict[str, Any]:
    """Merge, save, export and check; returns the report (also written to <out>/export.json)."""
    from vla.data.statistics import load_statistics

    start = time.perf_counter()
    run_dir, out = Path(cfg.run), Path(cfg.out_dir)
    # An export never writes over another (nor over a folder of the user's): out_dir must not hold one.
    taken = [name for name in ("export.json", "model", "onnx", "heldout.npz") if (out / name).exists()]
    if taken:
        raise ExportError(
            f"out_dir={out}: already holds {', '.join(taken)}; choose a new out_dir (or leave it out: a "
            "new outputs/export/<date>/<time>/)"
        )
    overrides = {group: getattr(cfg, group) for group in RUN_OVERRIDE_GROUPS}
    train_cfg = load_train_config(run_dir, overrides)
    trained_dtype = load_train_config(run_dir).model.dtype
    if train_cfg.model.dtype != trained_dtype:
        print(f"model.dtype={train_cfg.model.dtype} (the run trained with {trained_dtype}): the merge "
              f"check compares against the adapter on a {train_cfg.model.dtype} base, not the model as trained")  # fmt: skip
    key = train_cfg.data.dataset_key
    state_stats = None
    if train_cfg.model.proprio and cfg.samples_from == "random":
        state_stats = proprio_stats(load_statistics(run_dir / "dataset_statistics.json")[key], key)
    samples = held_out_samples(train_cfg, cfg.held_out, cfg.samples_from, state_stats)
    full = (run_dir / "model" / "config.json").is_file()  # lora=full: nothing to merge
    # One model at a time (a 7B base twice would not fit): the model as trained first, then merged.
    adapter_preds = None if full else predictions(load_trained(run_dir, train_cfg, merge=False), samples)
    merged = load_trained(run_dir, train_cfg, merge=True)
    layout = merged.layout
    report: dict[str, Any] = {
        "run": str(run_dir),
        "overrides": {group: values for group, values in overrides.items() if values},
        "held_out": len(samples.images),
        "samples_from": cfg.samples_from,
        "head": layout.head,
        "chunk_size": layout.chunk_size,
        "proprio_dim": layout.proprio_dim,
        # The scene a policy trained on simulator data expects (evaluate.py and load_policy read it).
        "sim_scene": train_cfg.data.sim_scene(),
    }
    if key not in merged.norm_stats:
        raise ExportError(f"{run_dir / 'dataset_statistics.json'}: no statistics under {key!r}")
    report["action_dim"] = len(merged.norm_stats[key]["action"]["q01"])

    merged_preds = predictions(merged, samples)
    if adapter_preds is not None:
        diff = check_same_actions(
            adapter_preds, merged_preds, layout, cfg.actions_atol, "merged vs adapter model"
        )
        report["merge"] = (
            f"merged normalized actions within {cfg.actions_atol:g} of the adapter model's"
            if layout.continuous
            else "merged tokens identical to the adapter model's"
        )
        report["merge_max_abs_action_diff"] = diff
    else:
        report["merge"] = "lora=full: no adapter to merge"
    # Everything is written into a temporary sibling of out_dir, checked there, and moved into place
    # only when complete (export.json last): a killed export leaves nothing at out_dir.
    try:
        work = _atomic_folder(out)
    except OSError as err:
        raise ExportError(str(write_failure(out, err, "export", ", then export again"))) from None
    try:
        model_dir = merged.save_pretrained(work / "model")
        reloaded = predictions(OpenVLA.from_pretrained(model_dir), samples)
        check_same_actions(
            merged_preds, reloaded, layout, cfg.actions_atol, "the saved model reloaded vs merged"
        )
        saved = json.loads((model_dir / "config.json").read_text())
        report.update(
            model_dir=str(out / "model"), norm_stats_keys=sorted(saved["norm_stats"]), dataset_key=key
        )
        report["modules"] = check_saved_modules(model_dir, layout)
        samples.save(work / "heldout.npz")
        if cfg.onnx and layout.grounding_tokens_first:
            print("ONNX: skipped (a continuous head with grounding tokens first has no ONNX export yet; "
                  "serve the merged model with the torch backend)")  # fmt: skip
            report["onnx_skipped"] = "no ONNX export for a continuous head with grounding tokens first"
        elif cfg.onnx:
            onnx = export_and_check_onnx(merged, model_dir, work / "onnx", samples, merged_preds, cfg)
            onnx["dir"] = str(out / "onnx")
            onnx["tensorrt_engines"] = [str(out / "onnx" / Path(e).name) for e in onnx["tensorrt_engines"]]
            report["onnx"] = onnx
        report["wall_time_s"] = time.perf_counter() - start
        # The completion record, last: readers (benchmark, evaluate, predict, load_policy) refuse the
        # folder without it.
        (work / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        publish_export(work, out)
    except OSError as err:
        raise ExportError(str(write_failure(out, err, "export", ", then export again"))) from None
    except CheckpointError as err:  # a failed model save names the temporary folder: name out_dir
        raise ExportError(str(err).replace(str(work), str(out))) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def publish_export(work: Path, out: Path) -> None:
    """Move the finished export `work` to `out`: one rename when `out` does not exist; else (Hydra made
    it for its log) each entry renamed into it, export.json last, so `out` never looks complete early."""
    publish_permissions(work)
    if not out.exists():
        work.rename(out)
        return
    for entry in sorted(work.iterdir()):
        if entry.name != "export.json":
            entry.rename(out / entry.name)
    (work / "export.json").rename(out / "export.json")


def export_and_check_onnx(
    merged: OpenVLA,
    model_dir: Path,
    onnx_dir: Path,
    samples: HeldOut,
    merged_preds: list[ActionPrediction],
    cfg: ExportConfig,
) -> dict[str, Any]:
    """The ONNX graphs (float32, int8 when asked, TensorRT where it imports) and their checks against
    the float32 PyTorch model; returns export.json's `onnx` entry."""
    from vla.export.onnx import _float32_copy, build_tensorrt_engines, export_onnx, quantize_int8
    from vla.inference.onnx_policy import OnnxPolicy

    layout, n = merged.layout, len(samples.images)
    export_onnx(merged, onnx_dir, cfg.opset)
    fp32 = merged if next(merged.parameters()).dtype == torch.float32 else _float32_copy(merged)
    fp32_preds = merged_preds if fp32 is merged else predictions(fp32, samples)
    policy = OnnxPolicy(model_dir, onnx_dir, "fp32", cfg.threads)
    diff = check_same_actions(fp32_preds, predictions(policy, samples), layout, cfg.actions_atol,
                              "ONNX float32 vs PyTorch float32")  # fmt: skip
    entry: dict[str, Any] = {
        "dir": str(onnx_dir),
        "graphs": policy.meta["graphs"],
        "max_abs_action_diff": diff,
    }
    if layout.continuous:
        print(f"ONNX float32 vs PyTorch float32: normalized actions differ by up to {diff:.2e} on {n} "
              f"held-out samples (tolerance {cfg.actions_atol:.0e})")  # fmt: skip
    else:
        logit_diff = onnx_logit_diff(fp32, policy, samples)
        print(f"ONNX float32 vs PyTorch float32: identical action tokens on {n} held-out samples; max abs "
              f"logit difference {logit_diff:.2e} (tolerance {cfg.logits_atol:.0e})")  # fmt: skip
        if logit_diff > cfg.logits_atol:
            raise ExportError(
                f"ONNX logits differ from PyTorch by {logit_diff:.2e} > logits_atol={cfg.logits_atol}"
            )
        entry.update(tokens_identical=True, max_abs_logit_diff=logit_diff)
    if cfg.int8:
        quantize_int8(onnx_dir)
        int8_preds = predictions(OnnxPolicy(model_dir, onnx_dir, "int8", cfg.threads), samples)
        err = np.abs(normalized_actions(int8_preds) - normalized_actions(fp32_preds))
        entry.update(int8_max_abs_action_diff=float(err.max()), int8_mean_abs_action_diff=float(err.mean()))
        line = f"ONNX int8 vs PyTorch float32: normalized actions differ by {err.mean():.3f} on average, {err.max():.3f} at most"
        if not layout.continuous:
            agree = token_matrix(int8_preds) == token_matrix(fp32_preds)
            entry["int8_token_agreement"] = float(agree.mean())
            line += f"; {100 * entry['int8_token_agreement']:.1f}% of action tokens agree"
        print(line)
    engines = build_tensorrt_engines(onnx_dir) if cfg.tensorrt else None
    if engines is None and cfg.tensorrt:
        print("TensorRT: skipped (tensorrt does not import on this machine)")
    entry["tensorrt_engines"] = [str(e) for e in engines or []]
    return entry
