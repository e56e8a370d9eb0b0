"""Benchmark an export folder's runtimes on its held-out frames: latency, throughput, memory, agreement.

Each backend predicts whole actions end to end (image + instruction -> action: preprocessing, prefix
pass, one decode step per action token), batch 1, as a robot would call it. Timed actions cycle
through the held-out frames after `warmup` untimed ones.

Peak memory is the process's peak resident set size (Linux `VmHWM`, reset before each backend through
`/proc/self/clear_refs`) minus its resident size just before the backend was loaded: loading plus
inference, with Python's and the libraries' native allocations alike. Backends run in one process, so
memory freed by an earlier backend but kept by the allocator can hide part of a later one's.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.config import BenchmarkConfig
from vla.export.merge import HeldOut, action_tokens

log = logging.getLogger(__name__)


class Skipped(Exception):
    """This backend cannot run here (the reason is reported, the benchmark goes on)."""


@dataclass
class BackendResult:
    backend: str
    status: str = "ok"  # ok | skipped: <reason>
    latencies_ms: list[float] = field(default_factory=list)
    tokens_per_action: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    actions_per_s: float | None = None
    tokens_per_s: float | None = None
    peak_rss_delta_mb: float | None = None
    size_on_disk_mb: float | None = None
    agreement_with_torch_fp32: float | None = None
    speedup_vs_torch_fp32: float | None = None
    passed: bool | None = None


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _files_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


# Benchmark backends -> load_policy's backend and the torch dtype / quantization of the torch ones.
TORCH_BACKENDS = {
    "torch_fp32": {"dtype": "float32"},
    "torch_bf16": {"dtype": "bfloat16"},
    "torch_nf4": {"dtype": "float32", "quantization": "nf4"},
}
ONNX_BACKENDS = {"onnx_fp32": "onnx", "onnx_int8": "onnx_int8", "tensorrt": "tensorrt"}


def load_backend(name: str, export_dir: Path, threads: int) -> tuple[Any, float]:
    """The policy for `name` (`vla.inference.load_policy` on the export folder) and its size on disk."""
    from vla.inference import load_policy

    model_dir, onnx_dir = export_dir / "model", export_dir / "onnx"
    if name in TORCH_BACKENDS:
        policy = load_policy(export_dir, "torch", **TORCH_BACKENDS[name])
        return policy, _files_mb(sorted(model_dir.glob("*.safetensors")))
    if not (onnx_dir / "prefix.onnx").is_file():
        raise Skipped(f"no ONNX graphs in {onnx_dir} (export with onnx=true)")
    if name == "tensorrt":
        import onnxruntime as ort

        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise Skipped("tensorrt does not import on this machine") from None
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise Skipped("onnxruntime has no TensorrtExecutionProvider here")
    if name == "onnx_int8" and not (onnx_dir / "prefix.int8.onnx").is_file():
        raise Skipped(f"no int8 graphs in {onnx_dir} (export with int8=true)")
    policy = load_policy(export_dir, ONNX_BACKENDS[name], threads=threads)
    return policy, _files_mb(policy.model.files)


def time_backend(policy: Any, samples: HeldOut, warmup: int, actions: int) -> list[float]:
    n = len(samples.images)
    for i in range(warmup):
        policy.predict([samples.images[i % n]], [samples.instructions[i % n]])
    latencies = []
    for i in range(actions):
        start = time.perf_counter()
        policy.predict([samples.images[i % n]], [samples.instructions[i % n]])
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies


def bench_backend(
    name: str, export_dir: Path, samples: HeldOut, cfg: BenchmarkConfig
) -> tuple[BackendResult, np.ndarray | None]:
    result = BackendResult(name)
    gc.collect()
    tracked = _reset_peak_rss()
    before = _status_mb("VmRSS")
    try:
        policy, result.size_on_disk_mb = load_backend(name, export_dir, cfg.threads)
    except Skipped as why:
        result.status = f"skipped: {why}"
        return result, None
    lat = time_backend(policy, samples, cfg.warmup, cfg.actions)
    tokens = action_tokens(policy, samples)
    peak = _status_mb("VmHWM")
    if tracked and peak is not None and before is not None:
        result.peak_rss_delta_mb = peak - before
    result.latencies_ms = lat
    result.tokens_per_action = int(tokens.shape[1])
    result.p50_ms, result.p95_ms, result.p99_ms = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    result.actions_per_s = len(lat) / (sum(lat) / 1000)
    result.tokens_per_s = result.actions_per_s * result.tokens_per_action
    result.passed = result.tokens_per_s >= cfg.target_tokens_per_s
    del policy
    gc.collect()
    return result, tokens


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Every backend in `cfg.backends`; returns the report written to benchmark.json."""
    export_dir = Path(cfg.checkpoint)
    if not (export_dir / "model" / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint={export_dir}: not an export folder (no model/config.json); "
                                "run scripts/export.py run=<training run> first")  # fmt: skip
    if not (export_dir / "export.json").is_file():  # written last: its absence means an unfinished export
        raise FileNotFoundError(f"checkpoint={export_dir}: the export did not finish (no export.json); "
                                "export the run again")  # fmt: skip
    out_dir = Path(cfg.out_dir or export_dir)
    samples = HeldOut.load(export_dir / "heldout.npz")
    threads = cfg.threads or os.cpu_count() or 1
    cfg.threads = threads
    torch.set_num_threads(threads)
    results, tokens = [], {}
    for name in cfg.backends:
        result, toks = bench_backend(name, export_dir, samples, cfg)
        results.append(result)
        if toks is not None:
            tokens[name] = toks
        print(
            f"{name:11s} {result.status:>3s}"
            + (f"  p50 {result.p50_ms:.1f} ms, {result.tokens_per_s:.0f} tokens/s" if result.p50_ms else "")
        )
    reference = next((r for r in results if r.backend == "torch_fp32" and r.p50_ms), None)
    for r in results:
        if reference is not None and r.backend in tokens:
            r.agreement_with_torch_fp32 = float((tokens[r.backend] == tokens["torch_fp32"]).mean())
            r.speedup_vs_torch_fp32 = reference.p50_ms / r.p50_ms
    report = {
        "checkpoint": str(export_dir),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "threads": threads,
        "held_out_samples": len(samples.images),
        "warmup": cfg.warmup,
        "timed_actions": cfg.actions,
        "target_tokens_per_s": cfg.target_tokens_per_s,
        "peak_memory": "peak RSS (VmHWM, reset per backend) minus RSS before loading the backend",
        "results": [asdict(r) for r in results],
    }
    paths = write_reports(report, out_dir)
    if cfg.logger.name == "wandb":
        log_to_wandb(cfg, report, paths)
    report["files"] = [str(p) for p in paths]
    return report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(report: dict[str, Any]) -> str:
    target = report["target_tokens_per_s"]
    lines = [
        f"| backend | p50 ms | p95 ms | p99 ms | tokens/s | actions/s | vs torch_fp32 | agreement | peak RSS MB | size MB | >= {target:g} tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['status']} |  |  |  |  |  |  |  |  |  |")
            continue
        speed = _fmt(r["speedup_vs_torch_fp32"], ".2f")
        agree = _fmt(
            None if r["agreement_with_torch_fp32"] is None else 100 * r["agreement_with_torch_fp32"], ".1f"
        )
        lines.append(
            f"| {r['backend']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['actions_per_s']:.1f} | {speed}x | {agree}% | {_fmt(r['peak_rss_delta_mb'], '.0f')} "
            f"| {_fmt(r['size_on_disk_mb'], '.2f')} | {'pass' if r['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def latency_plot(report: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    ran = [r for r in report["results"] if r["status"] == "ok"]
    fig = Figure(figsize=(11, 0.6 * len(ran) + 2.4))
    left, right = fig.subplots(1, 2)
    names = [r["backend"] for r in ran]
    left.boxplot([r["latencies_ms"] for r in ran], vert=False, tick_labels=names, whis=(1, 99))
    left.set_xlabel("latency per action (ms); whiskers p1-p99")
    left.set_title(f"{report['timed_actions']} timed actions per backend")
    target = report["target_tokens_per_s"]
    colors = ["tab:green" if r["passed"] else "tab:red" for r in ran]
    right.barh(names, [r["tokens_per_s"] for r in ran], color=colors)
    right.axvline(target, color="black", linestyle="--", label=f"target {target:g} tokens/s")
    right.set_xscale("log")  # the target stays visible next to rates 100x above it
    right.set_xlabel("action tokens per second (log scale)")
    right.invert_yaxis()
    left.invert_yaxis()
    right.legend(loc="lower right")
    fig.suptitle(f"{Path(report['checkpoint']).name}: {report['machine']}, threads={report['threads']}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """benchmark.json, benchmark.md and benchmark_latency.png (each written to a temp file, renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("benchmark.json", json.dumps(report, indent=2) + "\n"),
        ("benchmark.md", markdown_table(report)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
        written.append(out_dir / name)
    written.append(latency_plot(report, out_dir / "benchmark_latency.png"))
    return written


def log_to_wandb(cfg: BenchmarkConfig, report: dict[str, Any], paths: list[Path]) -> None:
    """A W&B run with the table, the plot and each backend's numbers (offline unless a mode is set)."""
    import wandb

    mode = cfg.logger.mode or os.environ.get("WANDB_MODE") or "offline"
    run = wandb.init(
        project=cfg.logger.project,
        mode=mode,
        dir=str(paths[0].parent),
        name=f"benchmark-{Path(cfg.checkpoint).name}",
        job_type="benchmark",
        tags=list(cfg.logger.tags),
        config=asdict(cfg),
    )
    keys = [
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "tokens_per_s",
        "actions_per_s",
        "agreement_with_torch_fp32",
        "peak_rss_delta_mb",
        "size_on_disk_mb",
    ]
    rows = [[r["backend"], r["status"], *[r[k] for k in keys]] for r in report["results"]]
    run.log({"benchmark/table": wandb.Table(columns=["backend", "status", *keys], data=rows),
             "benchmark/latency": wandb.Image(str(paths[2]))})  # fmt: skip
    for r in report["results"]:
        for k in keys:
            if r[k] is not None:
                run.summary[f"{r['backend']}/{k}"] = r[k]
    run.finish()
    print(f"W&B run:     {run.dir}")
