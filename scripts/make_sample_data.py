"""Generate the simulated athena sample dataset (scripted experts, Isaac episode folders).

python scripts/make_sample_data.py                                   # data=sample's dataset, into the cache
python scripts/make_sample_data.py data.sample.episodes_per_task=30 data.sample.workers=2
python scripts/make_sample_data.py output_dir=/tmp/athena write_pickle=true     # a folder of your own
The dataset is the one `python train.py` reads with the same data.sample keys.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import MakeSampleDataConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: MakeSampleDataConfig) -> dict:
    """Write the episodes; returns {"root", "episodes", "seconds", "seconds_per_episode", ...}."""
    from vla.sim.episodes import SETTINGS_FILE, ensure_sample_dataset, generate_dataset

    sample = cfg.data.sample
    start = time.perf_counter()
    if cfg.output_dir is None:
        settings = sample.generation_settings(cfg.sim)
        root = ensure_sample_dataset(settings, cache_dir=cfg.paths.cache_dir, workers=sample.workers)
    else:
        root = Path(cfg.output_dir)
        # Nothing the user already has is written over (a demos.pkl of their own, other episodes).
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            held = sorted(p.name for p in root.iterdir())[:3] if root.is_dir() else [root.name]
            raise FileExistsError(
                f"output_dir={root}: not an empty folder (holds {', '.join(held)}, ...); choose a new or "
                "empty folder: make_sample_data writes over nothing"
            )
        settings = sample.generation_settings(cfg.sim, write_pickle=cfg.write_pickle)
        generate_dataset(settings, root, workers=sample.workers)
    summary = json.loads((root / SETTINGS_FILE).read_text(encoding="utf-8"))["summary"]
    # The summary is the generation's own timing; a cache hit reports it and took ~0 s now.
    return {"root": str(root), "wall_seconds": round(time.perf_counter() - start, 2), **summary}


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_sample_data")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco
    with user_errors():
        print(json.dumps(run(to_object(cfg, MakeSampleDataConfig))))


if __name__ == "__main__":
    main()
