"""Schema of continuous learning (`scripts/learn_online.py`, `vla.learn`): deploy the current policy,
record and relabel its episodes, fine-tune on all the data so far, promote only what is better."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.deploy import ControlSettings
from vla.config.sim import EVALUATION_SEED_BASE, SimConfig, check_tasks
from vla.config.train import LoggerConfig, PathsConfig

# dagger: every rollout kept, each step labelled with the scripted expert's action at the state the
# policy visited; success_only: only the rollouts judged successful, labelled with the commands they
# executed (the seed's ContinuousLearningVLA); expert_demos: the behaviour-cloning baseline, as many
# fresh scripted-expert demonstrations as the other modes record rollouts (no policy involved).
RELABEL_MODES = ("dagger", "success_only", "expert_demos")
JUDGES = ("sim", "human")  # who says whether an episode succeeded: the simulator, or a person (y/n)
# point: promote when the candidate succeeds in more of the same held-out scenes than the deployed
# policy; interval: only when the candidate's 95% Wilson interval lies wholly above the deployed one's.
PROMOTION_RULES = ("point", "interval")
ROLLOUT_SEED_BASE = 500_000  # rollout scenes: above generation's seeds, below evaluation's
ROUND_SEED_STRIDE = 10_000  # round r records seeds rollout_seed + r * stride + i


@dataclass
class RoundTraining:
    """Each round's fine-tune, from the deployed policy's weights (`init_from`) on all data so far.
    Every other training key is the start run's own (its saved config.yaml)."""

    max_steps: int = 300
    val_check_interval: int = 150
    lr: float | None = None  # null: the start run's optim.lr
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        if self.max_steps < 1 or not 1 <= self.val_check_interval <= self.max_steps:
            raise ConfigError(
                f"train.max_steps={self.max_steps} must be >= 1 and train.val_check_interval="
                f"{self.val_check_interval} in [1, max_steps]"
            )
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"train.lr={self.lr} must be in (0, 1) (or null: the start run's)")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be >= 0")


@dataclass
class LearnSettings:
    """The loop: rounds of deploy -> record -> relabel -> fine-tune -> evaluate -> promote."""

    rounds: int = 3
    tasks: list[str] = field(default_factory=lambda: ["all"])
    episodes_per_task: int = 10  # new episodes per task each round (a fine-tune every N = this x tasks)
    relabel: str = "dagger"  # one of RELABEL_MODES
    judge: str = "sim"  # one of JUDGES; human asks y/n on the terminal after each episode
    # DAgger's mixing: in round r (1, 2, ...) each chunk request is answered by the expert with
    # probability beta = beta0 * beta_decay ** (r - 1), else by the policy (Ross et al. 2011, pi_i =
    # beta_i pi* + (1 - beta_i) pi_hat_i). Round 0, the start policy's demonstrations, is all expert.
    beta0: float = 0.5
    beta_decay: float = 0.5
    rollout_seed: int = ROLLOUT_SEED_BASE
    eval_episodes_per_task: int = 50  # held-out scenes per task for promotion (the same every round)
    eval_seed: int = EVALUATION_SEED_BASE
    promotion: str = "point"  # one of PROMOTION_RULES
    seed: int = 0  # the mixing coin's stream

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks, "learn.tasks")
        check_choice("learn.relabel", self.relabel, RELABEL_MODES)
        check_choice("learn.judge", self.judge, JUDGES)
        check_choice("learn.promotion", self.promotion, PROMOTION_RULES)
        if self.rounds < 1 or self.episodes_per_task < 1 or self.eval_episodes_per_task < 1:
            raise ConfigError(
                "learn.rounds, learn.episodes_per_task and learn.eval_episodes_per_task must be >= 1"
            )
        if not (0 <= self.beta0 <= 1 and 0 <= self.beta_decay <= 1):
            raise ConfigError(
                f"learn.beta0={self.beta0} and learn.beta_decay={self.beta_decay} must be in [0, 1]"
            )
        last = self.rollout_seed + (self.rounds + 1) * ROUND_SEED_STRIDE
        if self.rollout_seed < ROLLOUT_SEED_BASE or last > EVALUATION_SEED_BASE:
            raise ConfigError(
                f"learn.rollout_seed={self.rollout_seed}: rollout scenes must lie in [{ROLLOUT_SEED_BASE}, "
                f"{EVALUATION_SEED_BASE}) for all {self.rounds} rounds (disjoint from generation and evaluation)"
            )
        if self.episodes_per_task > ROUND_SEED_STRIDE:
            raise ConfigError(
                f"learn.episodes_per_task={self.episodes_per_task} must be <= {ROUND_SEED_STRIDE}"
            )
        if self.eval_seed < EVALUATION_SEED_BASE:
            raise ConfigError(
                f"learn.eval_seed={self.eval_seed} must be >= {EVALUATION_SEED_BASE} (held out)"
            )
        if self.judge == "human" and self.relabel == "expert_demos":
            raise ConfigError("learn.judge=human has nothing to judge with learn.relabel=expert_demos")

    def beta(self, round_index: int) -> float:
        """The expert's share of the chunk requests in round `round_index` (1, 2, ...)."""
        if self.relabel != "dagger":
            return 0.0
        return self.beta0 * self.beta_decay ** (round_index - 1)

    def round_seeds(self, round_index: int) -> range:
        start = self.rollout_seed + round_index * ROUND_SEED_STRIDE
        return range(start, start + self.episodes_per_task)


@dataclass
class LearnOnlineConfig:
    """`scripts/learn_online.py`. `output_dir` holds the versioned dataset and the rounds; pointing it
    at an earlier loop's folder resumes that loop after its last complete step."""

    start: str = MISSING  # the start policy: a finished lora=full training run folder
    learn: LearnSettings = field(default_factory=LearnSettings)
    train: RoundTraining = field(default_factory=RoundTraining)
    # The robot client's loop for the rollouts (safety filter and recovery always on).
    control: ControlSettings = field(default_factory=ControlSettings)
    sim: SimConfig = field(default_factory=SimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    output_dir: str = MISSING  # set by Hydra: outputs/learn_online/<date>/<time>

    def __post_init__(self) -> None:
        if not self.sim.safety.enabled:
            raise ConfigError(
                "sim.safety.enabled=false: the deployed policy always runs behind the safety filter"
            )
