"""The benchmark: every backend runs (or says why not), per-chunk latency and control rate for both
heads, the labelled openvla-7b projection, and the three reports are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, compose_config, load_script
from vla.config import BenchmarkConfig, ConfigError


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An export folder as scripts/export.py writes it, for a random tiny model (28 px, 5-dim actions)."""
    from vla.config import ActionLayout
    from vla.export.merge import HeldOut
    from vla.export.onnx import export_onnx, quantize_int8
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    out = tmp_path_factory.mktemp("export")
    action = {k: [0.0] * 5 for k in ("mean", "std", "min", "max")}
    action.update(q01=[-1.0] * 5, q99=[1.0] * 5, mask=[True] * 5)
    model = build_tiny_model(TinyArchitecture(image_size=28), norm_stats={"d": {"action": action}})
    model.set_layout(ActionLayout(constrain_decoding=True))
    model.save_pretrained(out / "model")
    export_onnx(model, out / "onnx")
    quantize_int8(out / "onnx")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(3)]
    HeldOut(images, ["reach the red ball", "turn the torso left", "lift the left knee"]).save(
        out / "heldout.npz"
    )
    # Written last by scripts/export.py: what marks a finished export folder (vla.inference.load_policy).
    (out / "export.json").write_text(json.dumps({"onnx": {"dir": str(out / "onnx")}}))
    return out


@pytest.fixture(scope="module")
def l1_export_dir(tmp_path_factory) -> Path:
    """An export folder of a tiny l1-head model with a 4-value state input (chunks of 2 x 3 actions),
    trained in a 10 Hz scene (export.json's sim_scene)."""
    from test_l1_head import IMAGES, TEXTS, tiny

    from vla.export.merge import HeldOut
    from vla.export.onnx import export_onnx, quantize_int8

    out = tmp_path_factory.mktemp("l1_export")
    model = tiny("l1", True)
    model.save_pretrained(out / "model")
    export_onnx(model, out / "onnx")
    quantize_int8(out / "onnx")
    HeldOut(IMAGES, TEXTS, np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.2]])).save(out / "heldout.npz")
    (out / "export.json").write_text(json.dumps({"sim_scene": {"control_hz": 10.0}}))
    return out


def assert_projection(projection: dict, chunk_size: int, action_dim: int, state_dim: int = 0) -> None:
    """The 7B projection covers every head at every precision, for the export's chunk, and says what it is."""
    assert projection["what"].startswith("PROJECTION") and "Orin NX 16GB" in projection["what"]
    assert projection["chunk"] == {"chunk_size": chunk_size, "action_dim": action_dim, "grounding": 0,
                                   "state_dim": state_dim}  # fmt: skip
    assert projection["device"]["bandwidth_gb_s"] == 102.4 and projection["device"]["source"]
    rows = {(r["head"], r["weights"]): r for r in projection["rows"]}
    assert set(rows) == {(h, w) for h in ("tokens_autoregressive", "tokens_parallel", "l1", "l1_steps")
                         for w in ("fp16", "int8", "int4")}  # fmt: skip
    for (head, _), r in rows.items():
        assert r["chunk_ms"] > 0 and r["actions_per_s"] == pytest.approx(1000 * chunk_size / r["chunk_ms"])
        assert (r["tokens_per_s"] is None) == head.startswith("l1")
    n = chunk_size * action_dim
    assert rows[("tokens_autoregressive", "int8")]["passes"] == n  # the prefix, then n - 1 decode steps
    assert rows[("l1", "int8")]["passes"] == rows[("l1_steps", "int8")]["passes"] == 1
    assert not rows[("l1", "fp16")]["fits"] and rows[("l1", "int4")]["fits"]  # 15 GB of bf16 weights
    # One position per chunk step instead of D: K * (D - 1) fewer positions through the 32 layers, at
    # least 2 x 6.5 GFLOP each (the LLM's linear weights), and an action MLP that reads H, not D * H.
    saved = rows[("l1", "fp16")]["gflops"] - rows[("l1_steps", "fp16")]["gflops"]
    assert saved >= chunk_size * (action_dim - 1) * 2 * 6.476
    if action_dim > 1:
        assert rows[("l1_steps", "fp16")]["chunk_ms"] < rows[("l1", "fp16")]["chunk_ms"]


def bench_config(export_dir: Path, **kwargs) -> BenchmarkConfig:
    return BenchmarkConfig(checkpoint=str(export_dir), **{"warmup": 1, "actions": 4, "threads": 1, **kwargs})


def test_all_backends_and_three_reports(export_dir, tmp_path):
    from vla.export.bench import run_benchmark

    report = run_benchmark(bench_config(export_dir, out_dir=str(tmp_path)))
    results = {r["backend"]: r for r in report["results"]}
    assert list(results) == ["torch_fp32", "torch_bf16", "torch_nf4", "onnx_fp32", "onnx_int8", "tensorrt"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # CPU machines: the row says why instead of failing
        assert results["tensorrt"]["status"] == "skipped: tensorrt does not import on this machine"
    for name in ("torch_fp32", "torch_bf16", "torch_nf4", "onnx_fp32", "onnx_int8"):
        r = results[name]
        assert r["status"] == "ok" and len(r["latencies_ms"]) == 4 and r["tokens_per_chunk"] == 5
        assert r["chunk_p50_ms"] <= r["chunk_p95_ms"] <= r["chunk_p99_ms"] <= max(r["latencies_ms"])
        assert r["tokens_per_s"] == pytest.approx(5 * 4000 / sum(r["latencies_ms"]))
        assert r["actions_per_s"] == pytest.approx(4000 / sum(r["latencies_ms"]))  # K = 1
        assert r["control_rate_hz"] == pytest.approx(1000 / r["chunk_p99_ms"])
        assert r["passed"] == (r["tokens_per_s"] >= 8)  # no control rate known for this export
        assert 0.0 <= r["agreement_with_torch_fp32"] <= 1.0 and r["size_on_disk_mb"] > 0
        assert r["max_abs_action_diff_vs_torch_fp32"] >= 0.0
    assert results["torch_fp32"]["agreement_with_torch_fp32"] == 1.0
    assert results["onnx_fp32"]["agreement_with_torch_fp32"] == 1.0  # same weights, same decoding
    assert results["onnx_fp32"]["max_abs_action_diff_vs_torch_fp32"] == 0.0
    fp32_mb = results["onnx_fp32"]["size_on_disk_mb"]
    assert results["onnx_int8"]["size_on_disk_mb"] < 0.5 * fp32_mb  # int8 weights
    assert (report["head"], report["chunk_size"], report["action_dim"], report["state_dim"]) == (
        "tokens",
        1,
        5,
        0,
    )
    assert_projection(report["projection"], chunk_size=1, action_dim=5)

    assert json.loads((tmp_path / "benchmark.json").read_text())["results"][0]["backend"] == "torch_fp32"
    table = (tmp_path / "benchmark.md").read_text().splitlines()
    assert table[2].startswith("| backend | chunk p50 ms") and table[4].startswith("| torch_fp32 |")
    assert "| tensorrt | skipped" in table[9]
    assert any(line.startswith("**PROJECTION") for line in table) and "| l1_steps | int4 |" in table[-1]
    with Image.open(tmp_path / "benchmark_latency.png") as png:
        assert png.size[0] > 500 and png.size[1] > 200


def test_target_decides_pass_or_fail(export_dir, tmp_path):
    from vla.export.bench import run_benchmark

    report = run_benchmark(bench_config(export_dir, backends=["onnx_fp32"], target_tokens_per_s=1e9,
                                        out_dir=str(tmp_path)))  # fmt: skip
    assert report["results"][0]["passed"] is False
    assert report["results"][0]["agreement_with_torch_fp32"] is None  # no torch_fp32 to compare with
    assert "| FAIL |" in (tmp_path / "benchmark.md").read_text()
    # The control rate as a second target: a token head must meet both.
    report = run_benchmark(bench_config(export_dir, backends=["onnx_fp32"], target_control_hz=1e9,
                                        out_dir=str(tmp_path)))  # fmt: skip
    assert report["results"][0]["tokens_per_s"] >= 8 and report["results"][0]["passed"] is False


def test_l1_head_with_a_state_reports_chunks_and_the_control_rate(l1_export_dir, tmp_path):
    """A continuous head: chunk latency, K actions per chunk, no tokens; the control rate is judged
    against the training scene's 10 Hz (or target_control_hz); the held-out states reach the policy."""
    from vla.export.bench import run_benchmark

    cfg = bench_config(l1_export_dir, backends=["torch_fp32", "torch_bf16"], out_dir=str(tmp_path))
    report = run_benchmark(cfg)
    assert (report["head"], report["chunk_size"], report["action_dim"], report["state_dim"]) == (
        "l1",
        2,
        3,
        4,
    )
    assert report["target_tokens_per_s"] is None and report["target_control_hz"] == 10.0
    for r in report["results"]:
        assert r["status"] == "ok" and r["chunk_size"] == 2
        assert (
            r["tokens_per_chunk"] is None
            and r["tokens_per_s"] is None
            and r["agreement_with_torch_fp32"] is None
        )
        assert r["actions_per_s"] == pytest.approx(2 * 4000 / sum(r["latencies_ms"]))
        assert r["control_rate_hz"] == pytest.approx(2000 / r["chunk_p99_ms"])
        assert r["passed"] == (r["control_rate_hz"] >= 10.0)
    bf16 = report["results"][1]
    assert 0.0 < bf16["max_abs_action_diff_vs_torch_fp32"] < 0.1  # bf16 rounding, same model
    assert report["results"][0]["max_abs_action_diff_vs_torch_fp32"] == 0.0
    assert_projection(report["projection"], chunk_size=2, action_dim=3, state_dim=4)
    table = (tmp_path / "benchmark.md").read_text()
    assert ">= 10 Hz |" in table and "| torch_bf16 |" in table
    report = run_benchmark(bench_config(l1_export_dir, backends=["torch_fp32"], target_control_hz=1e9,
                                        out_dir=str(tmp_path)))  # fmt: skip
    assert report["results"][0]["passed"] is False


def test_l1_head_onnx_backends(l1_export_dir, tmp_path):
    from vla.export.bench import run_benchmark

    cfg = bench_config(
        l1_export_dir, backends=["torch_fp32", "onnx_fp32", "onnx_int8"], out_dir=str(tmp_path)
    )
    results = {r["backend"]: r for r in run_benchmark(cfg)["results"]}
    assert all(r["status"] == "ok" for r in results.values())
    assert results["onnx_fp32"]["max_abs_action_diff_vs_torch_fp32"] < 1e-5
    assert results["onnx_int8"]["size_on_disk_mb"] < 0.5 * results["onnx_fp32"]["size_on_disk_mb"]


def test_benchmark_config_is_checked(tmp_path):
    from vla.export.bench import run_benchmark

    with pytest.raises(ConfigError, match=r"backends='onnx_fp16' is not valid; choose one of \['torch_fp32'"):
        BenchmarkConfig(checkpoint="x", backends=["onnx_fp16"])
    with pytest.raises(ConfigError, match="target_control_hz=0 must be > 0"):
        BenchmarkConfig(checkpoint="x", target_control_hz=0)
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        run_benchmark(bench_config(tmp_path))
    typed = compose_config("benchmark", ["checkpoint=x", "logger=wandb", "actions=7"], BenchmarkConfig)
    assert typed.actions == 7 and typed.logger.name == "wandb" and typed.target_tokens_per_s == 8.0


def test_wandb_offline_run(export_dir, tmp_path, monkeypatch):
    from vla.export.bench import run_benchmark

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = bench_config(export_dir, backends=["onnx_fp32"], out_dir=str(tmp_path))
    cfg.logger.name = "wandb"
    run_benchmark(cfg)
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_train_export_benchmark_cli(tmp_path):
    """The three entry points as a user runs them, on the default sample data (a few steps)."""
    fast = ["logger=none", "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "data.batch_size=2"]  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    cli("train.py", *fast, f"paths.output_dir={tmp_path}")
    run_dir = next((tmp_path / "train").glob("*/*"))
    cli("scripts/export.py", f"run={run_dir}", f"paths.output_dir={tmp_path}", "held_out=4")
    export_dir = next((tmp_path / "export").glob("*/*"))
    assert (export_dir / "export.json").is_file()
    out = cli("scripts/benchmark.py", f"checkpoint={export_dir}", "actions=5", "warmup=1")
    assert "target 8 action tokens/s" in out.stdout
    for name in ("benchmark.json", "benchmark.md", "benchmark_latency.png"):
        assert (export_dir / name).is_file()


def test_bench_heads_script_times_every_head_on_both_backends(capsys, monkeypatch):
    """`make bench-heads` (scripts/bench_heads.py): one row per head and backend, the autoregressive token
    head as each backend's reference."""
    import sys

    monkeypatch.setattr(sys, "argv", ["bench_heads.py", "--chunk", "2", "--queries", "1", "--state"])
    load_script("bench_heads").main()
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" not in line
    ]
    rows = [r for r in rows if not r.startswith("| ---")]
    heads = [(r.split(" | ")[0].lstrip("| "), r.split(" | ")[1]) for r in rows]
    assert heads == [
        (head, backend)
        for head in ("tokens, autoregressive", "tokens, parallel", "l1", "l1, steps")
        for backend in ("torch", "onnxruntime")
    ]
    assert all(r.endswith("1.0x |") for r in rows[:2])
