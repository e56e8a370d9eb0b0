"""The benchmark: every backend runs (or says why not), and the three reports are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, compose_config
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
        assert r["status"] == "ok" and len(r["latencies_ms"]) == 4 and r["tokens_per_action"] == 5
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= max(r["latencies_ms"])
        assert r["tokens_per_s"] == pytest.approx(5 * 4000 / sum(r["latencies_ms"]))
        assert r["passed"] == (r["tokens_per_s"] >= 8)
        assert 0.0 <= r["agreement_with_torch_fp32"] <= 1.0 and r["size_on_disk_mb"] > 0
    assert results["torch_fp32"]["agreement_with_torch_fp32"] == 1.0
    assert results["onnx_fp32"]["agreement_with_torch_fp32"] == 1.0  # same weights, same decoding
    fp32_mb = results["onnx_fp32"]["size_on_disk_mb"]
    assert results["onnx_int8"]["size_on_disk_mb"] < 0.5 * fp32_mb  # int8 weights

    assert json.loads((tmp_path / "benchmark.json").read_text())["results"][0]["backend"] == "torch_fp32"
    table = (tmp_path / "benchmark.md").read_text().splitlines()
    assert table[0].startswith("| backend | p50 ms") and len(table) == 2 + 6
    assert "| tensorrt | skipped" in table[-1]
    with Image.open(tmp_path / "benchmark_latency.png") as png:
        assert png.size[0] > 500 and png.size[1] > 200


def test_target_decides_pass_or_fail(export_dir, tmp_path):
    from vla.export.bench import run_benchmark

    report = run_benchmark(bench_config(export_dir, backends=["onnx_fp32"], target_tokens_per_s=1e9,
                                        out_dir=str(tmp_path)))  # fmt: skip
    assert report["results"][0]["passed"] is False
    assert report["results"][0]["agreement_with_torch_fp32"] is None  # no torch_fp32 to compare with
    assert "| FAIL |" in (tmp_path / "benchmark.md").read_text()


def test_benchmark_config_is_checked(tmp_path):
    from vla.export.bench import run_benchmark

    with pytest.raises(ConfigError, match=r"backends='onnx_fp16' is not valid; choose one of \['torch_fp32'"):
        BenchmarkConfig(checkpoint="x", backends=["onnx_fp16"])
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
    assert "target 8 action tokens/s:" in out.stdout
    for name in ("benchmark.json", "benchmark.md", "benchmark_latency.png"):
        assert (export_dir / name).is_file()
