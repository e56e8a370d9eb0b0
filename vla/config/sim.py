"""Schema of the `sim` group: the simulated athena humanoid, its safety filter, sample-data generation
and closed-loop evaluation settings (`vla.sim` reads them; nothing here imports the simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config.base import ConfigError

TASK_NAMES = ("reach_ball", "raise_arm", "turn_torso", "lift_knee")
BASELINES = ("expert", "random")
# Fixed cameras of the scene (their poses are in vla/sim/athena.py): "front" shows the whole robot;
# "upper_body" frames the chest and the ball region, so a ball is ~3x as many pixels across.
CAMERAS = ("front", "upper_body")
# Episode seeds: generation uses [seed, seed + episodes_per_task) with seed < EVALUATION_SEED_BASE;
# evaluation uses seeds from EVALUATION_SEED_BASE up, so no evaluated scene was ever trained on.
EVALUATION_SEED_BASE = 1_000_000
# The reach scene (vla.sim.tasks places the balls, vla.data.grounding reads their positions back from an
# episode's metadata): ball colours in their fixed order, and the region in front of the chest the balls
# are placed in (world frame, m). Depth varies little: a front camera shows left/right and up/down well
# but depth only through a ball's size.
BALL_NAMES = ("red", "green", "blue")
BALL_REGION_X, BALL_REGION_Y, BALL_REGION_Z = (0.26, 0.34), (-0.30, 0.30), (0.88, 1.22)


@dataclass
class SafetySettings:
    """The safety filter between a policy and the simulator (`vla.sim.safety`)."""

    enabled: bool = True
    # Largest joint speed a command may ask for (rad/s); per control step it is this / control_hz.
    # 4 rad/s is well under the G1's motor limits and leaves room for the experts' fastest motion.
    max_joint_speed: float = 4.0
    # Commands are clipped to the model's joint ranges shrunk by this margin (rad).
    joint_limit_margin: float = 0.02
    # Box (world frame, metres) both hand points must stay inside; the pelvis is fixed at x = y = 0,
    # 0.793 m up, facing +x. The experts' hands span x [-0.22, 0.49], y [-0.44, 0.42], z [0.62, 1.56];
    # the box adds ~8 cm and keeps hands out from behind the back, far to the sides and low down.
    workspace_min: list[float] = field(default_factory=lambda: [-0.3, -0.55, 0.55])
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.55, 1.7])
    # Stuck: for this many steps the policy asks to move (command farther than `stuck_request` rad from
    # the measured joints) but no joint moves more than `stuck_progress` rad. Then the command retracts
    # toward the home pose for `recovery_steps` steps.
    stuck_steps: int = 10
    stuck_progress: float = 0.02
    stuck_request: float = 0.1
    recovery_steps: int = 10

    def __post_init__(self) -> None:
        if self.max_joint_speed <= 0:
            raise ConfigError(f"safety.max_joint_speed must be > 0 rad/s, got {self.max_joint_speed}")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError("safety.workspace_min and safety.workspace_max must have 3 values (x, y, z)")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(
                f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}"
            )
        if self.stuck_steps < 1 or self.recovery_steps < 1:
            raise ConfigError("safety.stuck_steps and safety.recovery_steps must be >= 1")


# Which joints a disturbance displaces: the task's own joints, every other joint (those the posture
# check wants back at home), or all 23.
DISTURBED_JOINTS = ("task", "others", "all")


@dataclass
class DisturbanceSettings:
    """Deployment conditions that nominal demonstrations never show (`vla.sim.tasks.sample_disturbance`):
    the episode starts away from the home pose and/or the robot is pushed once mid-episode. Read by
    closed-loop evaluation (`scripts/evaluate.py`, `EvalSettings.disturbance`), by `train.py`'s in-loop
    closed-loop check and by `learn_online`'s rollouts and held-out evaluation; sample-data generation
    and the loop's behaviour-cloning demonstrations are recorded without it (a teleoperator records from
    home, undisturbed), and `scripts/make_sample_data.py` / `scripts/convert_data.py`, which only
    generate demonstrations, refuse it (`refuse_disturbance`) rather than ignore it.

    Every draw comes from the episode's seed (apart from its scene's stream), so every policy evaluated
    on a scene meets the same disturbance. All zero (the default): no disturbance, nothing changes."""

    # rad: the episode starts at home + N(0, start_std) on `joints` (clipped inside the joint ranges).
    start_std: float = 0.0
    # Chance that an episode gets one push: after a step drawn uniformly from its first half, `joints`
    # are displaced by N(0, push_std) rad and left at rest; the command is unchanged.
    push_prob: float = 0.0
    push_std: float = 0.0
    joints: str = "others"  # one of DISTURBED_JOINTS

    def __post_init__(self) -> None:
        for key in ("start_std", "push_prob", "push_std"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"sim.disturbance.{key}={getattr(self, key)} must be >= 0")
        if self.push_prob > 1:
            raise ConfigError(f"sim.disturbance.push_prob={self.push_prob} must be in [0, 1]")
        if self.joints not in DISTURBED_JOINTS:
            raise ConfigError(f"sim.disturbance.joints={self.joints!r}: choose from {list(DISTURBED_JOINTS)}")

    @property
    def enabled(self) -> bool:
        return self.start_std > 0 or (self.push_prob > 0 and self.push_std > 0)


def refuse_disturbance(settings: DisturbanceSettings, entry_point: str) -> None:
    """A ConfigError for an entry point that only records demonstrations, which are undisturbed."""
    if settings.enabled:
        raise ConfigError(
            f"sim.disturbance: {entry_point} records the expert's demonstrations, which start at home "
            "undisturbed (as a teleoperator records them); disturbances apply where a policy acts: "
            "scripts/evaluate.py, train.py's closed-loop check, scripts/learn_online.py. Drop the "
            "sim.disturbance overrides here"
        )


@dataclass
class SimConfig:
    """The `sim` group (`conf/sim/athena.yaml`): how the simulated athena is built and guarded. Its camera,
    image size and action rate are the dataset's (`data.sample`), so that generation, training's
    closed-loop checks and evaluation always agree (`SampleDataConfig.sim_settings`)."""

    # Fraction of mesh triangles removed once into the cache (0 = the wheel's full meshes, ~4x slower
    # to render on the CPU). 0.85 keeps ~60k of 393k triangles, visually the same at 224 px.
    mesh_reduction: float = 0.85
    safety: SafetySettings = field(default_factory=SafetySettings)
    disturbance: DisturbanceSettings = field(default_factory=DisturbanceSettings)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mesh_reduction < 1.0:
            raise ConfigError(f"sim.mesh_reduction must be in [0, 1), got {self.mesh_reduction}")


@dataclass
class SimSettings:
    """The simulated robot and its camera, as `vla.sim` runs it: the `sim` group (SimConfig) with the
    camera, image size and action rate of the data (`data.sample`)."""

    image_size: int = 224  # square RGB frames from the camera (OpenVLA's input size)
    camera: str = "front"  # one of CAMERAS
    control_hz: int = 25  # policy/action rate; physics runs at 500 Hz (the G1 model's 2 ms step)
    # Fraction of mesh triangles removed once into the cache (0 = the wheel's full meshes, ~4x slower
    # to render on the CPU). 0.85 keeps ~60k of 393k triangles, visually the same at 224 px.
    mesh_reduction: float = 0.85
    safety: SafetySettings = field(default_factory=SafetySettings)

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"sim.image_size must be in [16, 1024] pixels, got {self.image_size}")
        if self.camera not in CAMERAS:
            raise ConfigError(f"sim.camera={self.camera!r}: choose from {list(CAMERAS)}")
        if self.control_hz < 1 or 500 % self.control_hz:
            raise ConfigError(f"sim.control_hz must divide the 500 Hz physics rate, got {self.control_hz}")
        if not 0.0 <= self.mesh_reduction < 1.0:
            raise ConfigError(f"sim.mesh_reduction must be in [0, 1), got {self.mesh_reduction}")


def check_tasks(tasks: list[str], key: str) -> list[str]:
    """`tasks` with "all" expanded; unknown names fail with the valid choices."""
    if list(tasks) == ["all"]:
        return list(TASK_NAMES)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise ConfigError(
            f"{key}: unknown or empty task list {unknown or tasks}; choose from {list(TASK_NAMES)} or [all]"
        )
    return list(tasks)


@dataclass
class SampleDataSettings:
    """What `make_sample_data.py` and `ensure_sample_dataset` generate; the cache key hashes all of it."""

    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    episodes_per_task: int = 30
    seed: int = 0  # first episode seed; episode i of every task uses seed + i
    write_pickle: bool = False  # also write `demos.pkl` in the seed's teleop pickle format
    # DART-style noise injection (Laskey et al. 2017), std in rad: the command executed at each step is
    # the expert's target plus a random offset on the task's joints (redrawn every second; none in the
    # final second, so every episode still ends at the goal), while the recorded action stays the
    # expert's target. The frames then show the robot off the expert's path, labelled with the way back:
    # the corrections a policy needs after its own errors, which clean demos never show. 0: clean demos.
    expert_noise: float = 0.0
    sim: SimSettings = field(default_factory=SimSettings)
    # Episodes of the named tasks instead of episodes_per_task (e.g. {reach_ball: 1000}: the task that
    # needs the image most gets the most scenes); entries for tasks not in `tasks` are unused.
    task_episodes: dict[str, int] = field(default_factory=dict)
    # Counterfactual instructions (CAST, Glossop et al. 2025): each reach_ball scene is recorded up to
    # this many more times (0-2), each naming another ball that the named hand can reach, with the
    # expert going there (`vla.sim.tasks.counterfactual_episode`). The same images then come with
    # different colour words and different motions, so the colour word is what tells them apart.
    counterfactual_twins: int = 0

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks, "tasks")
        if not 0 <= self.counterfactual_twins <= len(BALL_NAMES) - 1:
            raise ConfigError(
                f"counterfactual_twins={self.counterfactual_twins} must be in 0..{len(BALL_NAMES) - 1} "
                "(the other balls of a reach scene)"
            )
        unknown = sorted(set(self.task_episodes) - set(TASK_NAMES))
        if unknown:
            raise ConfigError(f"task_episodes names {unknown}; the tasks are {list(TASK_NAMES)}")
        for task in self.tasks:
            count = self.episodes_for(task)
            if count < 1:
                raise ConfigError(f"episodes for {task} must be >= 1, got {count}")
            if self.seed < 0 or self.seed + count > EVALUATION_SEED_BASE:
                raise ConfigError(
                    f"generation seeds [{self.seed}, {self.seed + count}) must lie in "
                    f"[0, {EVALUATION_SEED_BASE}): seeds from {EVALUATION_SEED_BASE} up are held out for evaluation"
                )
        if not self.expert_noise >= 0:
            raise ConfigError(f"expert_noise={self.expert_noise}: must be >= 0 (rad; 0: clean demos)")

    def episodes_for(self, task: str) -> int:
        """How many episodes of `task` are generated."""
        return self.task_episodes.get(task, self.episodes_per_task)


@dataclass
class EvalSettings:
    """Closed-loop evaluation (`vla.sim.evaluate.evaluate_policy`)."""

    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    episodes_per_task: int = 20
    seed: int = EVALUATION_SEED_BASE  # first held-out episode seed; must be >= EVALUATION_SEED_BASE
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    gif_episodes: int = 2  # rollouts per task drawn into `<task>.gif` (0: no GIFs)
    # Language probe: reach_ball's instruction names the colour of the distractor nearest the named ball,
    # while success and the named-ball rate are still scored against the named ball. A policy that
    # follows the colour word drops toward 0% named ball; one that ignores it scores as without the swap.
    # The expert reads its goal from the simulator and is unaffected.
    swap_color: bool = False
    # Steps of each action chunk executed before the policy is asked again: null executes the whole
    # chunk (OpenVLA-OFT, ACT without ensembling); 1 re-plans every step (receding horizon).
    execute_steps: int | None = None
    sim: SimSettings = field(default_factory=SimSettings)
    # Start-pose offsets and pushes (off by default); the same on a scene for every policy and baseline.
    disturbance: DisturbanceSettings = field(default_factory=DisturbanceSettings)

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks, "tasks")
        if self.execute_steps is not None and self.execute_steps < 1:
            raise ConfigError(f"execute_steps={self.execute_steps} must be >= 1 (null: the whole chunk)")
        if self.episodes_per_task < 1:
            raise ConfigError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.seed < EVALUATION_SEED_BASE:
            raise ConfigError(
                f"seed={self.seed}: evaluation seeds must be >= {EVALUATION_SEED_BASE} "
                "(lower seeds generate training data)"
            )
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"baselines: unknown {unknown}; choose from {list(BASELINES)}")
