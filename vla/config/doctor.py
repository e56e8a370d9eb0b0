"""Schema of `scripts/doctor.py` (`conf/doctor.yaml`): the data doctor's stage and its thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.data import DataConfig
from vla.config.model import ModelConfig
from vla.config.sim import SimConfig
from vla.config.train import PathsConfig

SEVERITIES = ("info", "warning", "error")


@dataclass
class DoctorSettings:
    """What the doctor flags (`doctor.*`). The defaults leave the simulator's sample data (`data=sample`:
    1,100 episodes, 15,900 frames) without a warning; the measured margins are in the comments."""

    # A dataset_statistics.json, or a folder holding one (a training run, an export, an OpenVLA model:
    # its dataset_statistics.json, else config.json's norm_stats) to compare the action size and ranges
    # with. None: the configured model's (`model.pretrained`, when it is a local folder).
    base_stats: str | None = None
    # The key of those statistics to compare with. None: data.dataset_key, else the only key.
    base_key: str | None = None
    # Exit status 1 when a finding has this severity or a worse one: error | warning.
    fail_on: str = "error"
    # Outliers, in units of the dimension's q01..q99 range r: a value below q01 - k*r or above
    # q99 + k*r. Actions: the sample data's farthest value is 0.74 r out. States: its joint velocities
    # spike (contacts) up to 650 r, so the states' limit is far looser; null: states not checked.
    outlier_k: float = 3.0
    state_outlier_k: float | None = 1000.0
    # Step jumps, as a fraction of the dimension's q01..q99 range: |x[t+1] - x[t]| above it is flagged.
    # Actions: at most 0.39 in the sample data. States: up to 652 (velocity spikes); null: not checked.
    max_jump: float = 1.0
    state_max_jump: float | None = 1000.0
    # Degrees among radians: an episode whose largest |value| in a dimension exceeds `unit_limit` (2 pi:
    # more than a full turn, in radians) while the median episode's largest |value| stays below it. The
    # sample data's largest |value| anywhere is 5.1 (a joint velocity).
    unit_limit: float = 2 * math.pi
    # The same for the states; null: not checked (fast joint velocities can pass 2 pi rad/s).
    state_unit_limit: float | None = 2 * math.pi
    # A dimension frozen in an episode (one value for all its steps) while it moves in at least this
    # share of the episodes: a dead sensor or a column lost in a conversion. The sample data's states
    # move in every episode; its actions in at most 44% (each task moves its own joints).
    frozen_share: float = 0.8
    # Gripper-like dimensions (exactly two values in the whole dataset, "gripper" in the name, or in
    # data.mask_dims) are flagged outside [-1, 1]; there is no threshold. (The sample data has none: its
    # joint targets hold poses but pass through other values between them.)
    # Timestamps: a step longer than `timestamp_gap` x the expected step (1/fps when the episode records
    # its fps, else its median step) is a gap; a median step off 1/fps by more than `fps_tolerance`
    # (relative) is flagged too. The sample data's steps are 0.2 s +- 2e-16 at 5 fps.
    timestamp_gap: float = 1.5
    fps_tolerance: float = 0.1
    # Instructions held by fewer episodes than this are flagged (the sample data's rarest has 10).
    min_instruction_episodes: int = 3
    # Hash the first and last frame files of every episode (and in-memory frames whole) to find
    # episodes with the same images: one read of two small files per episode. Video clips are not read.
    hash_frames: bool = True
    # Per-dimension statistics rows and findings' episode lists are cut to this many in the report.
    max_listed: int = 10

    def __post_init__(self) -> None:
        check_choice("doctor.fail_on", self.fail_on, ("error", "warning"))
        positive = ["outlier_k", "max_jump", "unit_limit", "timestamp_gap", "fps_tolerance"]
        optional = ("state_outlier_k", "state_max_jump", "state_unit_limit")
        positive += [key for key in optional if getattr(self, key) is not None]
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"doctor.{key}={getattr(self, key)} must be > 0")
        if self.timestamp_gap <= 1:
            raise ConfigError(f"doctor.timestamp_gap={self.timestamp_gap} must be > 1 (x the expected step)")
        if not 0 < self.frozen_share <= 1:
            raise ConfigError(f"doctor.frozen_share={self.frozen_share} must be in (0, 1]")
        if self.min_instruction_episodes < 1 or self.max_listed < 1:
            raise ConfigError(
                f"doctor.min_instruction_episodes={self.min_instruction_episodes} and "
                f"doctor.max_listed={self.max_listed} must be >= 1"
            )


@dataclass
class DoctorConfig:
    """`scripts/doctor.py`: check a dataset before training on it; a Markdown report, plots and
    `doctor.json` go to the run folder, and the exit status says whether anything is wrong."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # model.pretrained: default base statistics
    sim: SimConfig = field(default_factory=SimConfig)  # generates data=sample's episodes on first use
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = MISSING  # set by Hydra: outputs/doctor/<date>/<time>
    doctor: DoctorSettings = field(default_factory=DoctorSettings)
