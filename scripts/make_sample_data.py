"""Generate the simulated athena sample dataset (scripted experts, Isaac episode folders).

python scripts/make_sample_data.py                                   # the default dataset, into the cache
python scripts/make_sample_data.py episodes_per_task=5 sim.image_size=96 output_dir=/tmp/athena workers=2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.config import MakeSampleDataConfig, to_settings  # noqa: E402


def run(cfg: MakeSampleDataConfig) -> dict:
    """Write the episodes; returns {"root", "episodes", "seconds", "seconds_per_episode", ...}."""
    from vla.sim.episodes import SETTINGS_FILE, ensure_sample_dataset, generate_dataset

    settings = cfg.settings()
    start = time.perf_counter()
    if cfg.output_dir is None:
        root = ensure_sample_dataset(settings, workers=cfg.workers)
    else:
        root = Path(cfg.output_dir)
        generate_dataset(settings, root, workers=cfg.workers)
    summary = json.loads((root / SETTINGS_FILE).read_text(encoding="utf-8"))["summary"]
    # The summary is the generation's own timing; a cache hit reports it and took ~0 s now.
    return {"root": str(root), "wall_seconds": round(time.perf_counter() - start, 2), **summary}


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_sample_data")
def main(cfg: DictConfig) -> None:
    print(json.dumps(run(to_settings(cfg, MakeSampleDataConfig))))


if __name__ == "__main__":
    main()
