"""Schema of the `data` and `augment` groups: where demonstrations come from and how they become samples."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vla.config.base import ConfigError, check_choice
from vla.config.sim import BALL_NAMES, CAMERAS, SampleDataSettings, SimConfig, SimSettings


@dataclass
class SampleDataConfig:
    """The simulated athena dataset that `data=sample` generates on first use (see vla/sim)."""

    tasks: list[str] = field(default_factory=lambda: ["all"])
    episodes_per_task: int = 8
    image_size: int = 112
    seed: int = 0
    # Actions per second of the generated episodes and of the closed-loop checks during training
    # (the simulator's physics runs at 500 Hz, so it must divide 500). OpenVLA's Bridge data is 5 Hz.
    control_hz: int = 25
    # The scene camera: front (the whole robot) or upper_body (the chest and the reach tasks' balls,
    # which then span ~3x as many pixels: what a small input size needs to place a hand on a ball).
    camera: str = "front"
    # Noise injection while recording (std in rad; vla.config.sim.SampleDataSettings.expert_noise): the
    # robot is pushed off the expert's path and the recorded actions lead back. 0: clean demos.
    expert_noise: float = 0.0
    workers: int = 1  # rendering processes when the dataset is generated (the content does not depend on it)
    # Episodes of the named tasks instead of episodes_per_task, e.g. {reach_ball: 1000}.
    task_episodes: dict[str, int] = field(default_factory=dict)
    # reach_ball scenes recorded again naming each other ball the hand can reach (0-2; the
    # counterfactual instructions of vla.config.sim.SampleDataSettings.counterfactual_twins). 0: off.
    counterfactual_twins: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.counterfactual_twins < len(BALL_NAMES):
            raise ConfigError(
                f"data.sample.counterfactual_twins={self.counterfactual_twins}: must be in "
                f"0..{len(BALL_NAMES) - 1} (the other balls of a reach scene)"
            )
        for key in ("episodes_per_task", "workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.sample.{key}={getattr(self, key)}: must be at least 1")
        if not self.expert_noise >= 0:
            raise ConfigError(
                f"data.sample.expert_noise={self.expert_noise}: must be >= 0 (rad; 0: clean demos)"
            )
        if self.camera not in CAMERAS:
            raise ConfigError(f"data.sample.camera={self.camera!r}: choose from {list(CAMERAS)}")

    def sim_settings(self, sim: SimConfig | None = None) -> SimSettings:
        """The simulator the episodes are recorded with and the closed-loop checks run in: `sim` (the
        `sim` group: meshes, safety) at this dataset's camera, image size and action rate."""
        sim = sim or SimConfig()
        return SimSettings(
            image_size=self.image_size,
            control_hz=self.control_hz,
            camera=self.camera,
            mesh_reduction=sim.mesh_reduction,
            safety=sim.safety,
        )

    def generation_settings(
        self, sim: SimConfig | None = None, write_pickle: bool = False
    ) -> SampleDataSettings:
        """What `vla.sim.episodes` generates for this dataset (its cache key hashes all of it)."""
        return SampleDataSettings(
            tasks=list(self.tasks),
            episodes_per_task=self.episodes_per_task,
            seed=self.seed,
            write_pickle=write_pickle,
            expert_noise=self.expert_noise,
            sim=self.sim_settings(sim),
            task_episodes=dict(self.task_episodes),
            counterfactual_twins=self.counterfactual_twins,
        )


@dataclass
class FilterConfig:
    """Episode quality rules (`vla.data.quality`), applied after loading and before the split.

    The defaults keep every episode of the simulator's sample data (60-75 steps; mean state variance
    0.004-0.04) and drop only degenerate ones: a handful of steps, or a robot that never moves.
    Non-finite actions or states always drop an episode (they cannot be trained on).
    """

    # Steps; shorter episodes are dropped (rule `too_short`). 5 steps is 0.2 s at athena's 25 Hz: too
    # short to show a motion, yet small enough for the tiny test datasets.
    min_length: int = 5
    max_length: int | None = None  # steps; longer episodes are dropped (rule `too_long`); None: no limit
    # Mean over state dimensions of each dimension's variance over time (rule `static`); 0 turns it off.
    # Episodes without state dimensions cannot be judged and are kept (counted as `static_unjudged`).
    min_state_variance: float = 1e-4

    def __post_init__(self) -> None:
        if self.min_length < 1:
            raise ConfigError(f"data.filter.min_length={self.min_length} must be >= 1")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ConfigError(
                f"data.filter.max_length={self.max_length} must be >= data.filter.min_length="
                f"{self.min_length} (or null for no limit)"
            )
        if self.min_state_variance < 0:
            raise ConfigError(f"data.filter.min_state_variance={self.min_state_variance} must be >= 0")


@dataclass
class AnnotationConfig:
    """Per-step language from motion (`vla.data.annotate`), used by data.instructions=annotated|both.

    Motion of a DoF group at step t: the L2 norm of the group's action change from step t-1 to t (rad
    per step for joint-position targets), averaged over `window` steps centred on t. The defaults fit
    athena (`vla.sim.athena`: legs 0-11, arms 12-19, waist 20-22; 25 Hz): its experts move a group by
    0.01-0.15 rad per step while they act and exactly 0 while they hold.
    """

    leg_dims: list[int] = field(default_factory=lambda: list(range(0, 12)))
    arm_dims: list[int] = field(default_factory=lambda: list(range(12, 20)))
    torso_dims: list[int] = field(default_factory=lambda: list(range(20, 23)))  # head / waist
    window: int = 5  # steps in the centred moving average (odd; 1: no smoothing)
    move_threshold: float = 0.01  # a group moves when its motion is at least this
    still_threshold: float = 0.001  # below this in every group: idle; between the two: preparation
    seed: int = 0  # phrasing choice (and the metadata/annotated choice of instructions=both)

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"data.annotation.window={self.window} must be an odd number >= 1")
        if not 0 <= self.still_threshold <= self.move_threshold:
            raise ConfigError(
                "data.annotation thresholds must satisfy 0 <= still_threshold <= move_threshold, got "
                f"still_threshold={self.still_threshold}, move_threshold={self.move_threshold}"
            )
        seen: dict[int, str] = {}
        for key in ("leg_dims", "arm_dims", "torso_dims"):
            dims = getattr(self, key)
            if not dims:
                raise ConfigError(f"data.annotation.{key} must list at least one action dimension")
            for dim in dims:
                if dim < 0:
                    raise ConfigError(f"data.annotation.{key} has negative dimension {dim}")
                if dim in seen:
                    raise ConfigError(
                        f"data.annotation.{key} and data.annotation.{seen[dim]} both hold dimension {dim}"
                    )
                seen[dim] = key


@dataclass
class DataConfig:
    """Where the demonstrations come from and how they are split and batched."""

    name: str = "sample"
    format: str = "sample"  # sample | isaac | pickle | lerobot | hdf5
    # isaac: folder of episodes; pickle: a file or a folder of them; lerobot: a LeRobotDataset v3 folder;
    # hdf5: an Isaac Lab / robomimic .hdf5 file or a folder of them
    root: str | None = None
    # lerobot / hdf5: the camera the model sees (a visual feature key, e.g. observation.images.front, or
    # an obs key); null: the first one (logged). The others stay in Episode.cameras, not decoded.
    camera: str | None = None
    # lerobot / hdf5: the state vectors, concatenated in this order; null: lerobot observation.state (when
    # present), hdf5 every non-image obs vector in name order; []: no state.
    state_keys: list[str] | None = None
    action_key: str | None = None  # lerobot / hdf5: null: "action" (lerobot), "actions" (hdf5)
    instruction: str | None = None  # hdf5: the instruction when the file records none
    dataset_key: str = "athena_sim"  # key of the statistics in dataset_statistics.json
    success_only: bool = False  # keep only episodes recorded as successful (applied by data.filter)
    on_error: str = "raise"  # raise | skip (bad episodes are reported and left out)
    val_fraction: float = 0.15
    split_seed: int = 0
    mask_dims: list[int] = field(default_factory=list)  # gripper-like dims left unnormalized
    join_gripper: bool = True  # pickle: action = action ++ gripper
    next_action: bool = True  # pickle: pair frame i with frame i+1's action
    batch_size: int = 8
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    # Leave no-op steps out of the train split: steps whose whole chunk repeats the previous action's
    # tokens (the robot holds still), as OpenVLA drops LIBERO's no-op actions. Validation keeps them.
    drop_idle_frames: bool = False
    # Grounding values this data's episodes give (`vla.data.grounding`: metadata 'grounding', or a
    # simulator reach scene's 8 ball positions); 0: none. conf/train.yaml sets model.layout.grounding to
    # it, so the default recipe predicts data=sample's ball positions beside the actions and other data
    # trains without grounding unless model.layout.grounding=G (or this key) asks for it.
    grounding_values: int = 0
    grounding_weight: float = 1.0  # training loss weight of a grounding token (an action token's is 1)
    grounding_weight_steps: int | None = None  # optimizer steps that weight holds for, then 1; null: all
    # Teacher-forcing noise: in training, each action token of the inputs (not the labels) is moved by
    # a uniform shift of -token_noise_bins..token_noise_bins bins with probability token_noise, so the later
    # tokens of a chunk learn to read the image and the grounding instead of copying the true ones
    # before them (which prediction does not have). 0: off (OpenVLA).
    token_noise: float = 0.0
    token_noise_bins: int = 8
    cache_images: bool = True  # decode each frame once into a memory-mapped uint8 cache (paths.cache_dir)
    sample: SampleDataConfig = field(default_factory=SampleDataConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # Training instruction of each step. metadata: the episode's instruction; annotated: a phrasing of it
    # for the step's motion phase (data.annotation); both: a seeded per-step choice between the two.
    instructions: str = "metadata"
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)

    def sim_scene(self) -> dict[str, Any] | None:
        """`sample`'s settings (camera, image size, control rate, ...) when the data is the simulator's,
        recorded with a trained policy so evaluation runs it in the scene it learned; None otherwise."""
        return dataclasses.asdict(self.sample) if self.format == "sample" else None

    def __post_init__(self) -> None:
        check_choice("data.format", self.format, ("sample", "isaac", "pickle", "lerobot", "hdf5"))
        check_choice("data.on_error", self.on_error, ("raise", "skip"))
        check_choice("data.instructions", self.instructions, ("metadata", "annotated", "both"))
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.grounding_weight < 0:
            raise ConfigError(f"data.grounding_weight={self.grounding_weight} must be >= 0")
        if self.grounding_weight_steps is not None and self.grounding_weight_steps < 0:
            raise ConfigError(f"data.grounding_weight_steps={self.grounding_weight_steps} must be >= 0")
        if not 0.0 <= self.token_noise <= 1.0:
            raise ConfigError(f"data.token_noise={self.token_noise} must be a probability in [0, 1]")
        if self.token_noise_bins < 1:
            raise ConfigError(f"data.token_noise_bins={self.token_noise_bins} must be >= 1")
        used_by = {"camera": ("lerobot", "hdf5"), "state_keys": ("lerobot", "hdf5"),
                   "action_key": ("lerobot", "hdf5"), "instruction": ("hdf5",)}  # fmt: skip
        for key, formats in used_by.items():
            if getattr(self, key) is not None and self.format not in formats:
                raise ConfigError(
                    f"data.{key} is read by data={'|'.join(formats)} only, not data.format={self.format}"
                )
        if self.format != "sample" and not self.root:
            raise ConfigError(
                f"data.root is required for data.format={self.format} (data=isaac data.root=DIR)"
            )


@dataclass
class AugmentConfig:
    """Image augmentation of the training split (albumentations), applied in this order: random
    resized crop, brightness, contrast, saturation, hue, Gaussian blur, Gaussian noise. An operation
    whose probability is 0 or whose range is the identity is left out. Validation, evaluation and
    prediction see un-augmented frames, centre-cropped to `crop_scale` when it is below 1."""

    name: str = "none"
    crop_scale: float = 1.0  # area of the random square-ish crop, resized back (OpenVLA: 0.9); 1: none
    crop_ratio: float = 1.0  # aspect ratio (width / height) of that crop (OpenVLA: 1)
    brightness: float = 0.0  # additive shift, uniform in [-b, b] of the full range (OpenVLA: 0.2)
    brightness_p: float = 1.0
    contrast: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor around the mean grey
    contrast_p: float = 1.0
    saturation: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor (1: unchanged)
    saturation_p: float = 1.0
    hue: float = 0.0  # shift, uniform in [-h, h] of the hue circle (OpenVLA: 0.05)
    hue_p: float = 1.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.5])  # Gaussian blur sigma range
    blur_p: float = 0.0
    noise_std: list[float] = field(default_factory=lambda: [0.01, 0.05])  # Gaussian noise std range
    noise_p: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"augment.crop_scale={self.crop_scale} must be in (0, 1] (1: no crop)")
        if self.crop_ratio <= 0.0:
            raise ConfigError(f"augment.crop_ratio={self.crop_ratio} must be > 0")
        if not 0.0 <= self.brightness <= 1.0 or not 0.0 <= self.hue <= 0.5:
            raise ConfigError(
                f"augment.brightness={self.brightness} must be in [0, 1] and augment.hue={self.hue} in [0, 0.5]"
            )
        for key in ("brightness_p", "contrast_p", "saturation_p", "hue_p", "blur_p", "noise_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"augment.{key}={getattr(self, key)} must be a probability in [0, 1]")
        for key in ("contrast", "saturation", "blur_sigma", "noise_std"):
            low_high = getattr(self, key)
            if len(low_high) != 2 or not 0.0 <= low_high[0] <= low_high[1]:
                raise ConfigError(f"augment.{key}={low_high} must be [low, high] with 0 <= low <= high")
