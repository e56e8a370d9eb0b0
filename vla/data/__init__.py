"""Episode loading for training: the formats, validation, the train/val split and statistics.

`load_isaac_episodes` / `load_pickle_demos` / `load_lerobot_dataset` / `load_hdf5_demos` return a
`LoadResult` of `Episode`s; `split_episodes` splits them by episode; `compute_statistics` /
`save_statistics` / `load_statistics` handle OpenVLA's `dataset_statistics.json`. Bad data raises
`DataError` (a ValueError) naming the file, episode or key.

The rest of the pipeline, in the order a training run applies it (`vla.data.datamodule`):
`quality` (episode filter), `annotate` (per-step instructions), `statistics` (split, normalization),
`cache` (decoded frames; `video` decodes MP4 clips), `augment` (training images), `dataset` (samples:
prompt, action chunk, pixels). `recorder` writes new demonstrations, `lerobot_writer` any episodes as
a LeRobotDataset v3; `inspect` draws what `scripts/inspect_data.py` shows.
"""

from vla.data.episodes import DataError, Episode, LoadResult, SkippedEpisode
from vla.data.hdf5 import load_hdf5_demos
from vla.data.isaac import load_isaac_episodes
from vla.data.lerobot import load_lerobot_dataset
from vla.data.lerobot_writer import write_lerobot_dataset
from vla.data.pickle_demos import load_pickle_demos
from vla.data.safe_pickle import UnsafePickleError, safe_load_pickle
from vla.data.statistics import (
    DatasetStatistics,
    compute_statistics,
    load_statistics,
    save_statistics,
    split_episodes,
)

__all__ = [
    "DataError",
    "DatasetStatistics",
    "Episode",
    "LoadResult",
    "SkippedEpisode",
    "UnsafePickleError",
    "compute_statistics",
    "load_hdf5_demos",
    "load_isaac_episodes",
    "load_lerobot_dataset",
    "load_pickle_demos",
    "load_statistics",
    "safe_load_pickle",
    "save_statistics",
    "split_episodes",
    "write_lerobot_dataset",
]
