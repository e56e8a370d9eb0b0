"""Benchmark an export folder's runtimes (per-chunk latency, control rate) and project openvla-7b on a
Jetson Orin NX 16GB.

python scripts/benchmark.py                                       # the latest export
python scripts/benchmark.py checkpoint=outputs/export/<date>/<time>
python scripts/benchmark.py checkpoint=DIR backends=[torch_fp32,onnx_fp32] actions=50 logger=wandb
python scripts/benchmark.py checkpoint=DIR target_control_hz=20  # judge the control rate (default: the scene's)
Writes benchmark.json, benchmark.md and benchmark_latency.png into the export folder (or out_dir).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import BenchmarkConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: BenchmarkConfig) -> dict:
    """Run every backend; returns the report written to benchmark.json (plus the files written)."""
    from vla.outputs import resolve_latest

    cfg.checkpoint = resolve_latest(cfg.checkpoint, "checkpoint", cfg.paths.output_dir, "export")
    from vla.export.bench import markdown_table, run_benchmark  # after the cheap check

    report = run_benchmark(cfg)
    print()
    print(markdown_table(report))
    ok = [r for r in report["results"] if r["status"] == "ok"]
    verdicts = ", ".join(f"{r['backend']} {'pass' if r['passed'] else 'FAIL'}" for r in ok)
    targets = []
    if report["target_tokens_per_s"] is not None:
        targets.append(f"{report['target_tokens_per_s']:g} action tokens/s")
    if report["target_control_hz"]:
        targets.append(f"{report['target_control_hz']:g} Hz control rate")
    if targets:
        print(f"target {' and '.join(targets)}: {verdicts}")
    else:
        print("no target applies (continuous head, no control rate known): set target_control_hz=")
    for path in report["files"]:
        print(f"wrote {path}")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(to_object(cfg, BenchmarkConfig))


if __name__ == "__main__":
    main()
