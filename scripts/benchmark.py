"""Benchmark an export folder's runtimes against the action-token target.

python scripts/benchmark.py                                       # the latest export
python scripts/benchmark.py checkpoint=outputs/export/<date>/<time>
python scripts/benchmark.py checkpoint=DIR backends=[torch_fp32,onnx_fp32] actions=50 logger=wandb
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
    from vla.export.bench import markdown_table, run_benchmark
    from vla.outputs import resolve_latest

    cfg.checkpoint = resolve_latest(cfg.checkpoint, "checkpoint", cfg.paths.output_dir, "export")
    report = run_benchmark(cfg)
    print()
    print(markdown_table(report))
    ok = [r for r in report["results"] if r["status"] == "ok"]
    verdicts = ", ".join(f"{r['backend']} {'pass' if r['passed'] else 'FAIL'}" for r in ok)
    print(f"target {cfg.target_tokens_per_s:g} action tokens/s: {verdicts}")
    for path in report["files"]:
        print(f"wrote {path}")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(to_object(cfg, BenchmarkConfig))


if __name__ == "__main__":
    main()
