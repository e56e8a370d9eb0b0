"""Export a dataset as a LeRobotDataset v3 (Parquet + MP4, meta/info.json, stats.json, tasks, episodes).

python scripts/convert_data.py output_dir=/tmp/athena_lerobot                    # the simulator's data=sample
python scripts/convert_data.py data=isaac data.root=DIR output_dir=OUT
python scripts/convert_data.py data=hdf5 data.root=demos.hdf5 data.instruction="stack the cubes" output_dir=OUT
python scripts/convert_data.py data=lerobot data.root=DIR output_dir=OUT video=false   # images in Parquet
The episodes are the loader's (data.on_error=skip leaves bad ones out and reports them); the quality
filter and annotation are training's business and are not applied. The folder is written beside
output_dir and renamed into place when complete.
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
from vla.config import ConvertDataConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: ConvertDataConfig) -> dict:
    """Load the `data` group's episodes and write them; returns the writer's summary plus the skipped
    episodes and the seconds it took."""
    from vla.data.datamodule import load_episodes
    from vla.data.lerobot_writer import write_lerobot_dataset
    from vla.sim.episodes import resolve_sample_data

    start = time.perf_counter()
    data = resolve_sample_data(cfg.data, cfg.sim, cfg.paths.cache_dir)  # data=sample: generated once
    loaded = load_episodes(data, cfg.paths.cache_dir)
    robot_type = cfg.robot_type or ("athena" if cfg.data.format == "sample" else None)
    summary = write_lerobot_dataset(
        loaded.episodes,
        cfg.output_dir,
        fps=cfg.fps,
        robot_type=robot_type,
        use_video=cfg.video,
        episodes_per_file=cfg.episodes_per_file,
        crf=cfg.crf,
        overwrite=cfg.overwrite,
    )
    summary["skipped"] = [{"episode": s.episode_id, "reason": s.reason} for s in loaded.skipped]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert_data")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (data=sample may generate its episodes)
    with user_errors():
        print(json.dumps(run(to_object(cfg, ConvertDataConfig))))


if __name__ == "__main__":
    main()
