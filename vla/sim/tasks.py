"""Language-conditioned athena tasks: scene sampling, instructions, scripted experts and success.

Every task has a `side` (left/right); reach_ball also a ball `color`, with the two other colours present
as distractors at random places, so the policy must read both the instruction and the image.

    task        episode   success, checked on the final step (also: posture, below)
    reach_ball  3.0 s     the named hand's point is within REACH_RADIUS of the named ball's centre
    raise_arm   3.0 s     the named hand is above ABOVE_HEAD_Z (the head's top is at ~1.33 m)
    turn_torso  2.4 s     waist yaw is past TURN_YAW toward the named side (left = +yaw)
    lift_knee   2.4 s     the named knee is KNEE_RISE above its standing height and KNEE_FORWARD in front

Posture: every joint the task does not need (all but the named arm, the waist, or the named leg) must
also end within POSTURE_TOLERANCE of the home pose; a policy that flails every joint fails, however
its hands end up (this is what keeps a random policy near 0%).

Experts move from home to a goal pose (inverse kinematics for reach_ball) along a minimum-jerk path
no faster than EXPERT_MAX_SPEED, then hold it, so success is reached well before the end.

Disturbances (`sample_disturbance`, `sim.disturbance`): an episode may start away from home and be
pushed once; the expert's plan is absolute joint targets, so it heads back to its path from wherever
the robot is (the safety filter's speed limit paces the way back).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import mujoco
import numpy as np

from vla.config.sim import BALL_REGION_X, BALL_REGION_Y, BALL_REGION_Z, DisturbanceSettings
from vla.sim.athena import (
    BALL_COLORS,
    BALL_RADIUS,
    HOME_POSE,
    LEFT_ARM_DIMS,
    NUM_JOINTS,
    RIGHT_ARM_DIMS,
    WAIST_DIMS,
    AthenaRobot,
)

REACH_RADIUS = BALL_RADIUS + 0.02  # the hand point is inside the ball, give or take 2 cm
ABOVE_HEAD_Z = 1.40
TURN_YAW = 0.6
KNEE_RISE = 0.15
KNEE_FORWARD = 0.15  # m in front of the pelvis (x)
POSTURE_TOLERANCE = 0.35
EXPERT_MAX_SPEED = 3.0  # rad/s, below the safety filter's default 4 rad/s
_MIN_MOVE_SECONDS = 1.0
_IK_LIMIT_MARGIN = 0.05  # rad
SIDES = ("left", "right")

_ARM = {"left": np.array(LEFT_ARM_DIMS), "right": np.array(RIGHT_ARM_DIMS)}
_LEG = {"left": np.arange(0, 6), "right": np.arange(6, 12)}
_WAIST = np.array(WAIST_DIMS)
_STANDING_KNEE_Z = 0.3537  # knee body height at the home pose (legs straight)

_BALL_X, _BALL_Y, _BALL_Z = BALL_REGION_X, BALL_REGION_Y, BALL_REGION_Z  # (vla.config.sim)
_TARGET_Y = {"left": (-0.05, 0.30), "right": (-0.30, 0.05)}  # reachable by that hand
_MIN_BALL_GAP = 0.16  # centre to centre: balls never overlap in the image

PHRASINGS = {
    "reach_ball": (
        "reach the {color} ball with your {side} hand",
        "touch the {color} ball with the {side} hand",
        "use your {side} hand to reach for the {color} ball",
        "put your {side} hand on the {color} ball",
    ),
    "raise_arm": (
        "raise your {side} arm above your head",
        "lift the {side} arm over your head",
        "put your {side} hand up high",
    ),
    "turn_torso": (
        "turn your torso to the {side}",
        "rotate your upper body to the {side}",
        "twist your waist to the {side}",
    ),
    "lift_knee": (
        "lift your {side} knee",
        "raise the {side} knee",
        "bring your {side} knee up",
    ),
}
EPISODE_SECONDS = {"reach_ball": 3.0, "raise_arm": 3.0, "turn_torso": 2.4, "lift_knee": 2.4}


@dataclass
class EpisodeSpec:
    """One sampled episode: what the policy is told, where the balls are, and the expert's plan."""

    task: str
    seed: int
    side: str
    color: str | None  # reach_ball only
    instruction: str  # the phrasing used in this episode
    phrasings: list[str]  # every phrasing of this task variant, the used one first
    balls: dict[str, np.ndarray] | None  # colour -> world position; None: no balls in the scene
    goal: np.ndarray  # [23] the expert's final joint targets
    num_steps: int
    move_steps: int  # the expert reaches `goal` after this many steps and holds it
    info: dict = field(default_factory=dict)

    def description(self) -> str:
        """The task in words, independent of the sampled phrasing (metadata `task_description`)."""
        return PHRASINGS[self.task][0].format(side=self.side, color=self.color)


def task_rng(task: str, seed: int) -> np.random.Generator:
    """The episode's random stream: seed i of two tasks gives unrelated scenes."""
    return np.random.default_rng([seed, list(PHRASINGS).index(task)])


def sample_episode(robot: AthenaRobot, task: str, seed: int) -> EpisodeSpec:
    if task not in PHRASINGS:
        raise ValueError(f"unknown task {task!r}; choose from {list(PHRASINGS)}")
    rng = task_rng(task, seed)
    side = SIDES[rng.integers(2)]
    color, balls = None, None
    goal = HOME_POSE.copy()
    sign = 1.0 if side == "left" else -1.0
    if task == "reach_ball":
        color = list(BALL_COLORS)[rng.integers(len(BALL_COLORS))]
        balls, goal = _sample_reach(robot, rng, side, color)
    elif task == "raise_arm":
        # Shoulder pitch about -2.8 puts the upper arm up; elbow ~pi/2 is the G1's straight arm.
        goal[_ARM[side]] = (
            rng.uniform(-2.9, -2.6),
            sign * rng.uniform(0.15, 0.4),
            rng.uniform(-0.2, 0.2),
            rng.uniform(1.35, 1.6),
        )
    elif task == "turn_torso":
        goal[_WAIST] = (sign * rng.uniform(0.8, 1.1), 0.0, 0.0)
    else:  # lift_knee: hip flexes forward (negative pitch), knee bends
        goal[_LEG[side]] = (rng.uniform(-1.45, -1.2), 0.0, 0.0, rng.uniform(1.3, 1.7), 0.0, 0.0)
    phrasings = [p.format(side=side, color=color) for p in PHRASINGS[task]]
    first = int(rng.integers(len(phrasings)))
    phrasings = [phrasings[first], *phrasings[:first], *phrasings[first + 1 :]]
    num_steps, move_steps = _timing(robot, task, goal)
    return EpisodeSpec(task, seed, side, color, phrasings[0], phrasings, balls, goal, num_steps, move_steps)


def _timing(robot: AthenaRobot, task: str, goal: np.ndarray) -> tuple[int, int]:
    """(steps in the episode, steps the expert takes to reach `goal` from home)."""
    hz = robot.sim.control_hz
    num_steps = round(EPISODE_SECONDS[task] * hz)
    biggest_move = float(np.max(np.abs(goal - HOME_POSE)))
    # Minimum-jerk peak speed is 1.875 * distance / duration.
    move_seconds = max(_MIN_MOVE_SECONDS, 1.875 * biggest_move / EXPERT_MAX_SPEED)
    return num_steps, min(num_steps - 1, int(np.ceil(move_seconds * hz)))


def counterfactual_episode(robot: AthenaRobot, spec: EpisodeSpec, twin: int) -> EpisodeSpec | None:
    """reach_ball's counterfactual twin `twin` (1 or 2) of `spec` (CAST-style counterfactual labels):
    the same scene, side and phrasing, but the instruction names the `twin`-th other ball (in
    BALL_COLORS order) and the expert reaches that one. None when that ball is not where the named hand's
    own targets are drawn (`_TARGET_Y`) or out of its reach: twins stay inside the task's distribution.

    A scene then shows up with two or three instructions and as many motions, so the colour word is the
    only thing that tells them apart (`SampleDataSettings.counterfactual_twins`)."""
    if spec.task != "reach_ball" or not spec.balls:
        raise ValueError(f"counterfactual twins are reach_ball's; got {spec.task}")
    others = [c for c in BALL_COLORS if c != spec.color]
    if not 1 <= twin <= len(others):
        raise ValueError(f"twin {twin}: reach_ball has {len(others)} other balls")
    color = others[twin - 1]
    target = spec.balls[color]
    if not _TARGET_Y[spec.side][0] <= target[1] <= _TARGET_Y[spec.side][1]:
        return None
    goal, error = solve_reach_ik(robot, spec.side, target)
    if error > 0.01:
        return None
    phrasings = [re.sub(rf"\b{spec.color}\b", color, p) for p in spec.phrasings]
    num_steps, move_steps = _timing(robot, spec.task, goal)
    info = {**spec.info, "counterfactual": {"twin": twin, "of_color": spec.color}}
    return dataclasses.replace(
        spec, color=color, instruction=phrasings[0], phrasings=phrasings, goal=goal,
        num_steps=num_steps, move_steps=move_steps, info=info,
    )  # fmt: skip


def _sample_reach(
    robot: AthenaRobot, rng: np.random.Generator, side: str, color: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ball places (target reachable by the hand, no overlaps) and the arm pose that reaches the target."""
    for _ in range(100):
        target = np.array([rng.uniform(*_BALL_X), rng.uniform(*_TARGET_Y[side]), rng.uniform(*_BALL_Z)])
        goal, error = solve_reach_ik(robot, side, target)
        if error > 0.01:
            continue  # out of reach of this arm: draw again
        placed = [target]
        for _ in range(200):
            if len(placed) == len(BALL_COLORS):
                break
            p = np.array([rng.uniform(*_BALL_X), rng.uniform(*_BALL_Y), rng.uniform(*_BALL_Z)])
            if all(np.linalg.norm(p - q) >= _MIN_BALL_GAP for q in placed):
                placed.append(p)
        if len(placed) < len(BALL_COLORS):
            continue
        others = [c for c in BALL_COLORS if c != color]
        distractors = [placed[1 + i] for i in rng.permutation(len(others))]
        return {color: target, **dict(zip(others, distractors))}, goal
    raise RuntimeError("could not sample a reachable reach_ball scene in 100 tries")


def solve_reach_ik(
    robot: AthenaRobot, side: str, target: np.ndarray, iterations: int = 150, damping: float = 0.05
) -> tuple[np.ndarray, float]:
    """Damped-least-squares IK on the 4 arm joints from the home pose: (23-DoF pose, distance left in m).

    Only the named arm moves; the solution stays 0.05 rad inside the joint limits (clipped every iteration).
    """
    dims = _ARM[side]
    # Clear of the limits, so the safety filter (its default margin is 0.02 rad) never edits the expert.
    lo, hi = robot.joint_limits[dims, 0] + _IK_LIMIT_MARGIN, robot.joint_limits[dims, 1] - _IK_LIMIT_MARGIN
    q = HOME_POSE.copy()
    # Start from the forearm pointing forward (elbow ~0): the hanging home arm is near-singular.
    q[dims[3]] = 0.3
    error = np.inf
    for _ in range(iterations):
        hand, jac = robot.hand_jacobian(q, side, dims)
        residual = target - hand
        error = float(np.linalg.norm(residual))
        if error < 1e-3:
            break
        step = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(3), residual)
        q[dims] = np.clip(q[dims] + np.clip(step, -0.3, 0.3), lo, hi)
    return q, error


def expert_action(spec: EpisodeSpec, step: int) -> np.ndarray:
    """Joint targets [23] for control step `step`: the min-jerk reference one step ahead, then the goal."""
    tau = min(1.0, (step + 1) / spec.move_steps)
    s = tau**3 * (10 - 15 * tau + 6 * tau**2)
    return HOME_POSE + s * (spec.goal - HOME_POSE)


def expert_noise_offsets(spec: EpisodeSpec, control_hz: int, std: float) -> np.ndarray:
    """[num_steps, 23] offsets added to the expert's commands when recording with noise injection
    (`SampleDataSettings.expert_noise`): normal with `std` rad on the task's joints, one draw per second
    of the episode, zero in the final second. Seeded by the episode, apart from its scene's stream."""
    offsets = np.zeros((spec.num_steps, NUM_JOINTS))
    if std <= 0:
        return offsets
    rng = np.random.default_rng([spec.seed, list(PHRASINGS).index(spec.task), 1])
    dims = task_dims(spec)
    for start in range(0, spec.num_steps - control_hz, control_hz):
        stop = min(start + control_hz, spec.num_steps - control_hz)
        offsets[start:stop, dims] = rng.normal(0.0, std, len(dims))
    return offsets


@dataclass
class Disturbance:
    """One episode's draw of `DisturbanceSettings`: where it starts, and its push (if any)."""

    start: np.ndarray  # [23] the joint positions the episode starts from
    push_step: int | None  # the push comes after this step's physics; None: no push
    push_offset: np.ndarray  # [23] rad added to the joint positions then (zero where not disturbed)

    def record(self) -> dict:
        """For an episode's metadata."""
        return {
            "start": self.start.round(4).tolist(),
            "push_step": self.push_step,
            "push_offset": self.push_offset.round(4).tolist(),
        }


def sample_disturbance(
    spec: EpisodeSpec, settings: DisturbanceSettings, joint_limits: np.ndarray
) -> Disturbance:
    """The episode's disturbance, seeded by the episode apart from its scene's and its noise's streams:
    every policy (and the expert) evaluated on a scene meets the same one. The draws are standard normals
    scaled by the std, always all of them, so a larger std displaces the same joints the same way, only
    farther, and turning pushes on does not change the start. Offsets stay 0.05 rad inside the joint
    ranges, so the safety filter's limit clip never edits where the robot starts."""
    rng = np.random.default_rng([spec.seed, list(PHRASINGS).index(spec.task), 2])
    mask = np.zeros(NUM_JOINTS, dtype=bool)
    if settings.joints in ("task", "all"):
        mask[task_dims(spec)] = True
    if settings.joints in ("others", "all"):
        mask[np.setdiff1d(np.arange(NUM_JOINTS), task_dims(spec))] = True
    start_draw, push_draw = rng.standard_normal(NUM_JOINTS), rng.standard_normal(NUM_JOINTS)
    coin, when = rng.random(), rng.integers(1, max(2, spec.num_steps // 2))
    lo, hi = joint_limits[:, 0] + _IK_LIMIT_MARGIN, joint_limits[:, 1] - _IK_LIMIT_MARGIN
    start = np.clip(HOME_POSE + mask * settings.start_std * start_draw, lo, hi)
    pushed = settings.push_std > 0 and coin < settings.push_prob
    return Disturbance(
        start=start,
        push_step=int(when) if pushed else None,
        push_offset=mask * settings.push_std * push_draw if pushed else np.zeros(NUM_JOINTS),
    )


def swapped_color_instruction(spec: EpisodeSpec) -> str:
    """reach_ball's instruction naming the colour of the distractor nearest the named ball instead of the
    named ball's (a language probe, `EvalSettings.swap_color`); other tasks' instruction unchanged."""
    if not spec.balls:
        return spec.instruction
    named = spec.balls[spec.color]
    rival = min(
        (c for c in spec.balls if c != spec.color), key=lambda c: np.linalg.norm(spec.balls[c] - named)
    )
    return re.sub(rf"\b{spec.color}\b", rival, spec.instruction)


def task_dims(spec: EpisodeSpec) -> np.ndarray:
    """The joints the task may move; all others must stay near home."""
    if spec.task in ("reach_ball", "raise_arm"):
        return _ARM[spec.side]
    if spec.task == "turn_torso":
        return _WAIST
    return _LEG[spec.side]


def evaluate_success(robot: AthenaRobot, data: mujoco.MjData, spec: EpisodeSpec) -> dict:
    """{"success": bool, "goal_met": bool, "posture_ok": bool, "value": the task's measured quantity,
    "named_ball": reach_ball: whether the named hand ends nearer the named ball than any other ball
    (the policy went for the right one, within the success radius or not); None for the other tasks}."""
    q = robot.joint_positions(data)
    others = np.setdiff1d(np.arange(NUM_JOINTS), task_dims(spec))
    posture_ok = bool(np.all(np.abs(q[others] - HOME_POSE[others]) <= POSTURE_TOLERANCE))
    hand = robot.hand_positions(data)[spec.side]
    named_ball = None
    if spec.task == "reach_ball":
        distances = {color: float(np.linalg.norm(hand - ball)) for color, ball in spec.balls.items()}
        value = distances[spec.color]
        goal_met = value <= REACH_RADIUS
        named_ball = min(distances, key=distances.get) == spec.color
    elif spec.task == "raise_arm":
        value = float(hand[2])
        goal_met = value >= ABOVE_HEAD_Z
    elif spec.task == "turn_torso":
        value = float(q[_WAIST[0]]) * (1.0 if spec.side == "left" else -1.0)
        goal_met = value >= TURN_YAW
    else:
        knee = data.xpos[robot.model.body(f"{spec.side}_knee_link").id]
        value = float(knee[2] - _STANDING_KNEE_Z)
        # Up and forward: swinging the leg out sideways (hip roll) also raises the knee.
        goal_met = value >= KNEE_RISE and knee[0] >= KNEE_FORWARD
    return {
        "success": bool(goal_met and posture_ok),
        "goal_met": bool(goal_met),
        "posture_ok": posture_ok,
        "value": value,
        "named_ball": named_ball,
    }
