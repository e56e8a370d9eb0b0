"""Benchmark an export folder's runtimes on its held-out samples: chunk latency, control rate, throughput,
memory, agreement with PyTorch float32; and a labelled projection of openvla-7b on a Jetson Orin NX 16GB
(`vla.export.projection`).

One query = one chunk: each backend predicts the whole chunk of K actions end to end (image +
instruction (+ robot state) -> K x D actions: preprocessing, then the prefix pass and one decode step per
action token for a token head, or the one pass of the l1 head), batch 1, as a robot would call it.
Timed queries cycle through the held-out samples after `warmup` untimed ones. Figures: chunk latency
p50/p95/p99; actions/s (K per chunk, back to back); the achievable control rate, K actions per p99 chunk
latency (a robot executing each chunk while the next is computed can run that many steps a second);
tokens/s for a token head (G + K*D tokens per chunk).

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
from vla.export.merge import HeldOut
from vla.export.projection import projection, projection_table

log = logging.getLogger(__name__)


class Skipped(Exception):
    """This backend cannot run here (the reason is reported, the benchmark goes on)."""


@dataclass
class BackendResult:
    """One backend's figures; one query = one chunk of K actions (K = 1 for single-step policies)."""

    backend: str
    status: str = "ok"  # ok | skipped: <reason>
    latencies_ms: list[float] = field(default_factory=list)  # per chunk (one query, end to end)
    chunk_size: int = 0  # K actions per chunk
    tokens_per_chunk: int | None = None  # G + K * D for a token head; None for a continuous head
    chunk_p50_ms: float | None = None
    chunk_p95_ms: float | None = None
    chunk_p99_ms: float | None = None
    chunks_per_s: float | None = None  # queries answered per second, back to back
    actions_per_s: float | None = None  # K x chunks per second
    # The step rate a robot can run while every chunk comes in time: K actions per p99 chunk latency.
    control_rate_hz: float | None = None
    tokens_per_s: float | None = None  # token heads: tokens_per_chunk x chunks per second
    peak_rss_delta_mb: float | None = None
    size_on_disk_mb: float | None = None
    agreement_with_torch_fp32: float | None = None  # token heads: share of identical action tokens
    max_abs_action_diff_vs_torch_fp32: float | None = None  # normalized actions, every head
    mean_abs_action_diff_vs_torch_fp32: float | None = None
    speedup_vs_torch_fp32: float | None = None  # of the p50 chunk latency
    passed: bool | None = None  # the targets that apply (tokens/s for a token head, control rate)


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
    from vla.inference.onnx_policy import POLICY_FILE, graph_paths

    model_dir, onnx_dir = export_dir / "model", export_dir / "onnx"
    if name in TORCH_BACKENDS:
        policy = load_policy(export_dir, "torch", **TORCH_BACKENDS[name])
        return policy, _files_mb(sorted(model_dir.glob("*.safetensors")))
    if not (onnx_dir / POLICY_FILE).is_file():
        raise Skipped(f"no ONNX graphs in {onnx_dir} (export with onnx=true)")
    if name == "tensorrt":
        import onnxruntime as ort

        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise Skipped("tensorrt does not import on this machine") from None
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise Skipped("onnxruntime has no TensorrtExecutionProvider here")
    if name == "onnx_int8" and not all(p.is_file() for p in graph_paths(onnx_dir, "int8")):
        raise Skipped(f"no int8 graphs in {onnx_dir} (export with int8=true)")
    policy = load_policy(export_dir, ONNX_BACKENDS[name], threads=threads)
    return policy, _files_mb(policy.model.files)


def predict(policy: Any, samples: HeldOut, i: int) -> Any:
    """Sample i (cycled) through `Policy.predict`, batch 1, with its robot state when there is one."""
    i %= len(samples.images)
    return policy.predict([samples.images[i]], [samples.instructions[i]], samples.state(i))


def time_backend(policy: Any, samples: HeldOut, warmup: int, queries: int) -> list[float]:
    """Milliseconds per query (one chunk), end to end, after `warmup` untimed ones."""
    for i in range(warmup):
        predict(policy, samples, i)
    latencies = []
    for i in range(queries):
        start = time.perf_counter()
        predict(policy, samples, i)
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies


def bench_backend(
    name: str, export_dir: Path, samples: HeldOut, cfg: BenchmarkConfig, target_hz: float | None
) -> tuple[BackendResult, list[Any] | None]:
    """One backend's figures, and its prediction of every held-out sample (None when skipped)."""
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
    preds = [predict(policy, samples, i) for i in range(len(samples.images))]
    peak = _status_mb("VmHWM")
    if tracked and peak is not None and before is not None:
        result.peak_rss_delta_mb = peak - before
    info = policy.info
    result.latencies_ms = lat
    result.chunk_size = info.chunk_size
    result.chunk_p50_ms, result.chunk_p95_ms, result.chunk_p99_ms = (
        float(np.percentile(lat, q)) for q in (50, 95, 99)
    )
    result.chunks_per_s = len(lat) / (sum(lat) / 1000)
    result.actions_per_s = info.chunk_size * result.chunks_per_s
    result.control_rate_hz = 1000 * info.chunk_size / result.chunk_p99_ms
    verdicts = []
    if preds[0].token_ids is not None:  # a token head
        result.tokens_per_chunk = info.grounding + info.chunk_size * info.action_dim
        result.tokens_per_s = result.tokens_per_chunk * result.chunks_per_s
        verdicts.append(result.tokens_per_s >= cfg.target_tokens_per_s)
    if target_hz is not None:
        verdicts.append(result.control_rate_hz >= target_hz)
    result.passed = all(verdicts) if verdicts else None
    del policy
    gc.collect()
    return result, preds


def compare_with_torch(results: list[BackendResult], preds: dict[str, list[Any]]) -> None:
    """Each backend's agreement with torch_fp32 on the held-out samples, and its speed-up."""
    reference = next((r for r in results if r.backend == "torch_fp32" and r.chunk_p50_ms), None)
    if reference is None:
        return
    expected = preds["torch_fp32"]
    for r in results:
        if r.backend not in preds:
            continue
        got = preds[r.backend]
        err = np.abs(np.stack([p.normalized for p in got]) - np.stack([p.normalized for p in expected]))
        r.max_abs_action_diff_vs_torch_fp32, r.mean_abs_action_diff_vs_torch_fp32 = (
            float(err.max()),
            float(err.mean()),
        )
        if got[0].token_ids is not None:
            same = np.stack([p.token_ids for p in got]) == np.stack([p.token_ids for p in expected])
            r.agreement_with_torch_fp32 = float(same.mean())
        r.speedup_vs_torch_fp32 = reference.chunk_p50_ms / r.chunk_p50_ms


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Every backend in `cfg.backends`, and the 7B projection; returns the report written to
    benchmark.json."""
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
    scene = json.loads((export_dir / "export.json").read_text()).get("sim_scene") or {}
    target_hz = cfg.target_control_hz or scene.get("control_hz")
    sizes = export_sizes(export_dir)
    results, preds = [], {}
    for name in cfg.backends:
        result, backend_preds = bench_backend(name, export_dir, samples, cfg, target_hz)
        results.append(result)
        if backend_preds is not None:
            preds[name] = backend_preds
        rates = (
            f"  p50 {result.chunk_p50_ms:.1f} ms a chunk, {result.control_rate_hz:.1f} Hz"
            if result.chunk_p50_ms
            else ""
        )
        print(f"{name:11s} {result.status:>3s}{rates}")
    compare_with_torch(results, preds)
    report = {
        "checkpoint": str(export_dir),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "threads": threads,
        **sizes,
        "held_out_samples": len(samples.images),
        "warmup": cfg.warmup,
        "timed_chunks": cfg.actions,
        "target_tokens_per_s": cfg.target_tokens_per_s if sizes["head"] == "tokens" else None,
        "target_control_hz": target_hz,
        "peak_memory": "peak RSS (VmHWM, reset per backend) minus RSS before loading the backend",
        "results": [asdict(r) for r in results],
        "projection": projection(*(sizes[k] for k in ("chunk_size", "action_dim", "grounding", "state_dim"))),
    }
    paths = write_reports(report, out_dir)
    if cfg.logger.name == "wandb":
        log_to_wandb(cfg, report, paths)
    report["files"] = [str(p) for p in paths]
    return report


def export_sizes(export_dir: Path) -> dict[str, Any]:
    """The head, K, D (of the only statistics key), G and S of the export's model (its config.json)."""
    from vla.model.action_tokenizer import action_stats
    from vla.model.configuration import OpenVLAConfig
    from vla.model.layout import layout_from_config

    config_file = export_dir / "model" / "config.json"
    config = OpenVLAConfig.from_json_file(config_file)
    stats_file = export_dir / "model" / "dataset_statistics.json"
    norm_stats = json.loads(stats_file.read_text()) if stats_file.is_file() else config.norm_stats or {}
    layout = layout_from_config(config.extra, str(config_file))
    return {
        "head": layout.head,
        "chunk_size": layout.chunk_size,
        "action_dim": len(action_stats(norm_stats, None)[1]["q01"]),
        "grounding": layout.grounding,
        "state_dim": layout.proprio_dim,
    }


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def markdown_table(report: dict[str, Any]) -> str:
    """The measured table (one query = one chunk), then the 7B projection, labelled as such."""
    tokens_target, hz = report["target_tokens_per_s"], report["target_control_hz"]
    targets = [f">= {tokens_target:g} tokens/s"] if tokens_target is not None else []
    targets += [f">= {hz:g} Hz"] if hz else []
    lines = [
        f"Measured: {report['head']} head, chunk of K={report['chunk_size']} x D={report['action_dim']} "
        f"actions per query; {report['machine']}, threads={report['threads']}.",
        "",
        "| backend | chunk p50 ms | chunk p95 ms | chunk p99 ms | actions/s | control Hz (K / p99) | tokens/s "
        f"| vs torch_fp32 | token agreement | max action diff | peak RSS MB | size MB | {', '.join(targets) or 'target'} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['status']} |" + "  |" * 11)
            continue
        agree = r["agreement_with_torch_fp32"]
        verdict = {True: "pass", False: "FAIL", None: "-"}[r["passed"]]
        lines.append(
            f"| {r['backend']} | {r['chunk_p50_ms']:.1f} | {r['chunk_p95_ms']:.1f} | {r['chunk_p99_ms']:.1f} "
            f"| {r['actions_per_s']:.1f} | {r['control_rate_hz']:.1f} | {_fmt(r['tokens_per_s'], '.0f')} "
            f"| {_fmt(r['speedup_vs_torch_fp32'], '.2f', 'x')} "
            f"| {_fmt(None if agree is None else 100 * agree, '.1f', '%')} "
            f"| {_fmt(r['max_abs_action_diff_vs_torch_fp32'], '.1e')} | {_fmt(r['peak_rss_delta_mb'], '.0f')} "
            f"| {_fmt(r['size_on_disk_mb'], '.2f')} | {verdict} |"
        )
    return "\n".join(lines) + "\n\n" + projection_table(report["projection"])


def latency_plot(report: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    ran = [r for r in report["results"] if r["status"] == "ok"]
    fig = Figure(figsize=(11, 0.6 * len(ran) + 2.4))
    left, right = fig.subplots(1, 2)
    names = [r["backend"] for r in ran]
    left.boxplot([r["latencies_ms"] for r in ran], vert=False, tick_labels=names, whis=(1, 99))
    left.set_xlabel("latency per chunk (ms, one query); whiskers p1-p99")
    left.set_title(f"{report['timed_chunks']} timed chunks of {report['chunk_size']} actions per backend")
    colors = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    bar_colors = [colors[r["passed"]] for r in ran]
    if report["target_tokens_per_s"] is not None:  # a token head: the seed's tokens/s target
        target, unit = report["target_tokens_per_s"], "tokens/s"
        right.barh(names, [r["tokens_per_s"] for r in ran], color=bar_colors)
        right.set_xlabel("action tokens per second (log scale)")
    else:
        target, unit = report["target_control_hz"], "Hz"
        right.barh(names, [r["control_rate_hz"] for r in ran], color=bar_colors)
        right.set_xlabel("achievable control rate, K / p99 chunk latency (Hz, log scale)")
    if target:
        right.axvline(target, color="black", linestyle="--", label=f"target {target:g} {unit}")
        right.legend(loc="lower right")
    right.set_xscale("log")  # the target stays visible next to rates 100x above it
    right.invert_yaxis()
    left.invert_yaxis()
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
        "chunk_p50_ms",
        "chunk_p95_ms",
        "chunk_p99_ms",
        "actions_per_s",
        "control_rate_hz",
        "tokens_per_s",
        "agreement_with_torch_fp32",
        "max_abs_action_diff_vs_torch_fp32",
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
