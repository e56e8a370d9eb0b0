"""Episode loading for training: the two seed formats, validation, the train/val split and statistics.

`load_isaac_episodes` / `load_pickle_demos` return a `LoadResult` of `Episode`s; `split_episodes` splits
them by episode; `compute_statistics` / `save_statistics` / `load_statistics` handle OpenVLA's
`dataset_statistics.json`. Bad data raises `DataError` (a ValueError) naming the file, episode or key.

The rest of the pipeline, in the order a training run applies it (`vla.data.datamodule`):
`quality` (episode filter), `annotate` (per-step instructions), `statistics` (split, normalization),
`cache` (decoded frames), `augment` (training images), `dataset` (samples: prompt, action chunk,
pixels). `recorder` writes new demonstrations; `inspect` draws what `scripts/inspect_data.py` shows.
"""

from vla.data.episodes import DataError, Episode, LoadResult, SkippedEpisode
from vla.data.isaac import load_isaac_episodes
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
    "load_isaac_episodes",
    "load_pickle_demos",
    "load_statistics",
    "safe_load_pickle",
    "save_statistics",
    "split_episodes",
]
