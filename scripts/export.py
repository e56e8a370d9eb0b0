"""Export a training run: merged OpenVLA folder, ONNX graphs (token head: prefix + decode with a KV
cache; l1 head: one chunk graph), int8 twins, parity checks against the adapter model and PyTorch.

python scripts/export.py                                           # the latest run -> outputs/export/<date>/<time>/
python scripts/export.py run=outputs/train/<date>/<time>
python scripts/export.py run=RUN out_dir=exports/athena int8=false
python scripts/export.py run=RUN model.pretrained=/local/openvla-7b data.root=/data/athena  # moved since
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import ExportConfig, register_configs, to_object  # noqa: E402

register_configs()
log = logging.getLogger("export")


def run(cfg: ExportConfig) -> dict:
    """Merge and export `cfg.run` into `cfg.out_dir`; returns the report written to export.json."""
    from vla.outputs import resolve_latest

    cfg.run = resolve_latest(cfg.run, "run", cfg.paths.output_dir, "train")  # before the heavy imports
    from vla.export.merge import export_run

    report = export_run(cfg)
    out = Path(cfg.out_dir)
    print(f"\nexport folder: {out}")
    print(f"merged model:  {report['model_dir']}  (norm_stats keys {report['norm_stats_keys']})")
    head = f"{report['head']} head, chunks of {report['chunk_size']} x {report['action_dim']} actions"
    state = f", reads a {report['proprio_dim']}-value robot state" if report["proprio_dim"] else ""
    print(f"policy:        {head}{state}; modules {report['modules'] or 'none beyond OpenVLA'}")
    if "onnx" in report:
        print(f"onnx graphs:   {report['onnx']['dir']}  {report['onnx']['graphs']}")
    print(f"report:        {out / 'export.json'}")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (sample data, closed-loop checks)
    with user_errors():
        report = run(to_object(cfg, ExportConfig))
    print(json.dumps({k: v for k, v in report.items() if k != "onnx"} | {"onnx": report.get("onnx")}))


if __name__ == "__main__":
    main()
