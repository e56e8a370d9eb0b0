"""The data doctor: check a dataset before training on it.

python scripts/doctor.py                                      # the simulated sample data
python scripts/doctor.py data=isaac data.root=DIR             # any format load_episodes reads
python scripts/doctor.py data=isaac data.root=DIR doctor.base_stats=outputs/train/<date>/<time>
Loads every episode as training would, but with data.on_error=skip so that every bad episode is
listed (with the loader's reason) instead of the first one stopping the run; prints the findings and
writes report.md, doctor.json, dimensions.png and instructions.png to outputs/doctor/<date>/<time>/.
Exit status: 0 without errors, 1 when a finding is an error (or a warning, with doctor.fail_on=warning),
2 when the data cannot be read at all (the message names the file).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import ConfigError, register_configs, to_object  # noqa: E402
from vla.config.doctor import DoctorConfig  # noqa: E402

register_configs()


def base_statistics(cfg: DoctorConfig) -> str | None:
    """doctor.base_stats, else model.pretrained when it is a local folder (a hub id is not fetched)."""
    if cfg.doctor.base_stats is not None:
        return cfg.doctor.base_stats
    pretrained = cfg.model.pretrained
    return pretrained if pretrained and Path(pretrained).expanduser().is_dir() else None


def run(cfg: DoctorConfig) -> dict:
    """Load, check, print the findings and write the report. Returns the severity counts, the exit
    status, the findings and the paths written."""
    from vla.data.datamodule import load_episodes
    from vla.data.doctor import diagnose, read_base_statistics
    from vla.data.doctor.report import write_report
    from vla.sim.episodes import resolve_sample_data

    base_stats = base_statistics(cfg)
    if base_stats is not None:  # a bad file or key fails now, not after loading the data
        base, source = read_base_statistics(base_stats)
        if cfg.doctor.base_key is not None and cfg.doctor.base_key not in base:
            raise ConfigError(
                f"doctor.base_key={cfg.doctor.base_key!r} is not in {source}; its keys: {sorted(base)}"
            )
    start = time.perf_counter()
    data = resolve_sample_data(cfg.data, cfg.sim, cfg.paths.cache_dir)  # data=sample: generated once
    data = dataclasses.replace(data, on_error="skip")
    loaded = load_episodes(data, cfg.paths.cache_dir)
    load_s = time.perf_counter() - start
    diagnosis = diagnose(
        loaded,
        cfg.doctor,
        mask_dims=cfg.data.mask_dims,
        dataset_key=cfg.data.dataset_key,
        base_stats=base_stats,
        quality=cfg.data.filter,
        success_only=cfg.data.success_only,
    )
    check_s = time.perf_counter() - start - load_s
    header = {
        "data": f"{cfg.data.name} ({cfg.data.format})",
        "root": data.root,
        "dataset_key": cfg.data.dataset_key,
        "time": f"load {load_s:.1f} s, checks {check_s:.1f} s",
    }
    paths = write_report(diagnosis, cfg.run_dir, header, cfg.doctor.max_listed)
    status = 1 if diagnosis.failed(cfg.doctor.fail_on) else 0
    counts = {severity: diagnosis.count(severity) for severity in ("error", "warning", "info")}
    print(f"\n== data doctor: {header['data']} at {data.root}")
    print(
        f"episodes: {diagnosis.loaded} loaded, {diagnosis.skipped} skipped, {len(diagnosis.checked)} checked"
    )
    for finding in diagnosis.findings:
        print(f"  {finding.severity:7} {finding.check}: {finding.message}")
    print(
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s); {header['time']}"
    )
    print(f"report: {paths['report']}")
    return {"counts": counts, "status": status, "findings": diagnosis.findings, "paths": paths}


@hydra.main(version_base="1.3", config_path="../conf", config_name="doctor")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (data=sample generates episodes on first use)
    with user_errors():
        result = run(to_object(cfg, DoctorConfig))
    raise SystemExit(result["status"])


if __name__ == "__main__":
    main()
