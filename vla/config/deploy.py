"""Schemas of deployment: the policy server (`scripts/serve.py`, `vla.deploy.server`) and the robot
client's control loop (`scripts/run_robot.py`, `vla.deploy.controller`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from vla.config.base import ConfigError, check_choice
from vla.config.sim import CAMERAS, EVALUATION_SEED_BASE, SimConfig, SimSettings, check_tasks
from vla.config.stages import POLICY_BACKENDS
from vla.config.train import PathsConfig

CHUNK_MODES = ("async", "sync")


@dataclass
class ServerSettings:
    """Where and how the policy server listens."""

    host: str = "127.0.0.1"  # 0.0.0.0 to accept robots on other machines
    port: int = 8765  # 0: any free port (tests)
    # Largest message accepted (bytes): a 224 px RGB frame is 150 kB; a larger frame closes the connection
    # (code 1009) before it is buffered.
    max_message_bytes: int = 4 * 2**20
    # Keepalive: a client that does not answer a ping within ping_timeout_s (dead, or stalled halfway
    # through a message) is disconnected; also the limit on the opening handshake.
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    # Requests answered at once per connection (a robot with a latency over half a chunk keeps several
    # in flight); beyond this the connection is not read until one is answered.
    max_in_flight: int = 16
    # Added to every reply after inference (measurements of late inference only; 0 in service).
    inject_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"server.port={self.port}: must be in [0, 65535]")
        if self.max_message_bytes < 2**16:
            raise ConfigError(f"server.max_message_bytes={self.max_message_bytes}: needs at least 65536")
        if self.max_in_flight < 1:
            raise ConfigError(f"server.max_in_flight={self.max_in_flight}: must be >= 1")
        if self.ping_interval_s <= 0 or self.ping_timeout_s <= 0 or self.inject_delay_ms < 0:
            raise ConfigError("server.ping_interval_s and ping_timeout_s must be > 0, inject_delay_ms >= 0")


@dataclass
class ControlSettings:
    """The robot client's control loop: how chunks are requested, blended and waited for."""

    url: str = "ws://127.0.0.1:8765"  # the policy server
    # async: ask for the next chunk while the current one still runs, blend the overlap (temporal
    # ensembling); sync: ask when the chunk is used up and hold still until the answer comes.
    mode: str = "async"
    # async: ask for the next chunk when this many actions are left. null: from the measured latency
    # (the largest lag, in ticks, of the last latency_window chunks, plus one; asking only once stopped,
    # as sync, when that lag is a chunk or more; half the chunk until the first chunk is measured).
    request_when_left: int | None = None
    latency_window: int = 5
    max_in_flight: int = 8  # async: requests in flight at once, at most
    # Temporal ensembling weight exp(-decay * i) of the i-th oldest prediction for a step (ACT's m;
    # 0: plain average).
    ensemble_decay: float = 0.01
    # Pace the loop at the policy's control rate in wall-clock time (a real robot; false: the simulator
    # waits for each chunk, lockstep with the server, as in-process evaluation does).
    realtime: bool = True
    # Watchdog: a request unanswered this long is given up and the connection re-opened.
    request_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    reconnect_backoff_s: float = 0.2  # first wait between reconnect attempts (doubles up to 2 s)
    # Recovery: after a stuck detection the safety filter retracts toward home, then the policy is asked
    # again (a retry); after max_retries retries the task is given up.
    max_retries: int = 2
    task_timeout_s: float | None = None  # null: the task's own episode length

    def __post_init__(self) -> None:
        check_choice("control.mode", self.mode, CHUNK_MODES)
        if self.request_when_left is not None and self.request_when_left < 1:
            raise ConfigError(f"control.request_when_left={self.request_when_left}: must be >= 1 or null")
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0 or self.reconnect_backoff_s <= 0:
            raise ConfigError(
                "control.request_timeout_s, connect_timeout_s and reconnect_backoff_s must be > 0"
            )
        if self.latency_window < 1 or self.max_in_flight < 1:
            raise ConfigError("control.latency_window and control.max_in_flight must be >= 1")
        if self.max_retries < 0 or self.ensemble_decay < 0:
            raise ConfigError("control.max_retries and control.ensemble_decay must be >= 0")


@dataclass
class ServeConfig:
    """`scripts/serve.py`: serve a policy to robot clients."""

    checkpoint: str = MISSING  # an export or a training run folder (or an OpenVLA-format folder)
    backend: str = "torch"  # torch | onnx | onnx_int8 | tensorrt (the ONNX ones need an export folder)
    unnorm_key: str | None = None  # statistics key; may be omitted when the checkpoint has one
    threads: int = 0  # onnxruntime threads (0: its default)
    server: ServerSettings = field(default_factory=ServerSettings)

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, POLICY_BACKENDS)


@dataclass
class RunRobotConfig:
    """`scripts/run_robot.py`: drive the simulated athena through a policy server, as a robot would be."""

    tasks: list[str] = field(default_factory=lambda: ["all"])
    episodes_per_task: int = 2
    seed: int = EVALUATION_SEED_BASE  # first held-out episode seed
    # The scene: camera, image size and control rate must be the policy's training data's.
    camera: str = "front"
    image_size: int = 224
    control_hz: int = 25
    control: ControlSettings = field(default_factory=ControlSettings)
    sim: SimConfig = field(default_factory=SimConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    output_dir: str = MISSING  # set by Hydra: outputs/run_robot/<date>/<time>; robot.json goes there

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks, "tasks")
        check_choice("camera", self.camera, CAMERAS)
        if self.episodes_per_task < 1:
            raise ConfigError(f"episodes_per_task={self.episodes_per_task}: must be >= 1")

    def sim_settings(self) -> SimSettings:
        return SimSettings(
            image_size=self.image_size,
            camera=self.camera,
            control_hz=self.control_hz,
            mesh_reduction=self.sim.mesh_reduction,
            safety=self.sim.safety,
        )


@dataclass
class BenchServeConfig:
    """`scripts/bench_serve.py`: the policy server on loopback. A section with 0 requests, seconds or
    episodes is skipped."""

    # 1. Overhead: sequential requests of a tiny random policy from one client (after 20 warm-up ones).
    requests: int = 1000
    # 2. Concurrency: robot clients in threads for this long (a soak: e.g. seconds=300).
    clients: int = 8
    seconds: float = 20.0
    # 3. Delay: the scripted expert served as a policy (chunks of `chunk` at 25 Hz, real time), so that
    # success measures only the deployment path, under each injected delay and chunk mode.
    chunk: int = 8
    episodes_per_task: int = 2
    tasks: list[str] = field(default_factory=lambda: ["raise_arm", "reach_ball", "turn_torso", "lift_knee"])
    delays_ms: list[float] = field(default_factory=lambda: [0.0, 100.0, 200.0, 400.0])
    modes: list[str] = field(default_factory=lambda: list(CHUNK_MODES))
    # 4. A trained policy (a run or export folder; null: skipped) in its training scene: success through
    # the server under each of policy_delays_ms and mode, and in-process on the same held-out seeds.
    checkpoint: str | None = None
    backend: str = "torch"
    policy_episodes_per_task: int = 10
    policy_delays_ms: list[float] = field(default_factory=lambda: [0.0, 200.0])
    seed: int = EVALUATION_SEED_BASE  # first held-out episode seed (sections 3 and 4)
    sim: SimConfig = field(default_factory=SimConfig)
    output_dir: str = MISSING  # set by Hydra: outputs/bench_serve/<date>/<time>; bench_serve.json goes there

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks, "tasks")
        check_choice("backend", self.backend, POLICY_BACKENDS)
        for mode in self.modes:
            check_choice("modes", mode, CHUNK_MODES)
        if min([self.requests, self.clients, self.seconds, self.episodes_per_task, self.chunk - 1]) < 0:
            raise ConfigError("requests, clients, seconds and episodes_per_task must be >= 0, chunk >= 1")
        if any(d < 0 for d in [*self.delays_ms, *self.policy_delays_ms]):
            raise ConfigError("delays_ms and policy_delays_ms must be >= 0")
