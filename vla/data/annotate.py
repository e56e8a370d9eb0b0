"""Per-step language annotation from motion: each step gets a phrasing of the task for what the robot
is doing then (`data.instructions=annotated|both`).

Motion of a DoF group (legs, arms, torso; `AnnotationConfig`) at step t is the L2 norm of the group's
action change from step t-1 to t, averaged over a centred window. A group *moves* when its motion is at
least `move_threshold`. Phases, from the groups that move:

    combined      legs and arms (torso either way): whole-body motion, e.g. walking while reaching
    walking       legs, not arms (torso either way): locomotion or stepping
    manipulation  arms only, or arms and torso: reaching, grasping, gesturing
    balancing     torso only: shifting the upper body's weight
    preparation   no group moves, but some group's motion is between `still_threshold` and
                  `move_threshold`: small adjustments before or after an action
    idle          every group's motion below `still_threshold`: holding still

Each maximal run of steps in one phase gets one phrasing, drawn from the phase's templates with a
generator seeded by (`seed`, episode id): the same config gives the same text in every run and process,
another seed gives other choices.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from vla.config import AnnotationConfig, ConfigError
from vla.data.episodes import Episode

PHASES = ("combined", "walking", "manipulation", "balancing", "preparation", "idle")
# `{task}` is the episode's instruction, an imperative ("reach the red ball with the left hand").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "combined": (
        "move the legs and arms together to {task}",
        "walk and reach to {task}",
        "use the whole body to {task}",
    ),
    "walking": ("walk forward to {task}", "step with the legs to {task}", "move the legs to {task}"),
    "manipulation": ("use the arms to {task}", "move the arms to {task}", "reach out to {task}"),
    "balancing": (
        "shift the torso to {task}",
        "keep balance with the torso to {task}",
        "turn the upper body to {task}",
    ),
    "preparation": ("get ready to {task}", "prepare to {task}", "adjust the posture to {task}"),
    "idle": ("hold the pose to {task}", "stay still to {task}", "keep the current posture to {task}"),
}
GROUP_KEYS = ("leg_dims", "arm_dims", "torso_dims")


def check_groups(cfg: AnnotationConfig, action_dim: int) -> None:
    """ConfigError naming the key when a group lists a dimension the actions do not have."""
    for key in GROUP_KEYS:
        outside = [dim for dim in getattr(cfg, key) if dim >= action_dim]
        if outside:
            raise ConfigError(
                f"data.annotation.{key} holds dimension(s) {outside}, but the actions have only "
                f"{action_dim} (0-{action_dim - 1}); set data.annotation.{key} for this robot"
            )


def group_motion(actions: np.ndarray, dims: list[int], window: int) -> np.ndarray:
    """[T] motion of one group: |a[t, dims] - a[t-1, dims]| (0 at t=0), centred moving average."""
    steps = np.diff(actions[:, dims].astype(np.float64), axis=0, prepend=actions[:1, dims])
    speed = np.linalg.norm(steps, axis=1)
    if window == 1:
        return speed
    # Edge-padded so the first and last steps average over a full window of real values.
    padded = np.pad(speed, window // 2, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def classify_phases(actions: np.ndarray, cfg: AnnotationConfig) -> list[str]:
    """The phase (one of `PHASES`) of every step of float [T, D] `actions`."""
    check_groups(cfg, actions.shape[1])
    legs, arms, torso = (group_motion(actions, getattr(cfg, key), cfg.window) for key in GROUP_KEYS)
    phases = []
    for leg, arm, trunk in zip(legs, arms, torso):
        moving_legs, moving_arms = leg >= cfg.move_threshold, arm >= cfg.move_threshold
        if moving_legs and moving_arms:
            phases.append("combined")
        elif moving_legs:
            phases.append("walking")
        elif moving_arms:
            phases.append("manipulation")
        elif trunk >= cfg.move_threshold:
            phases.append("balancing")
        elif max(leg, arm, trunk) >= cfg.still_threshold:
            phases.append("preparation")
        else:
            phases.append("idle")
    return phases


def task_text(instruction: str) -> str:
    """The instruction as a clause to insert into a template: trimmed, no final full stop."""
    return instruction.strip().rstrip(".").strip()


def annotate_steps(phases: list[str], task: str, rng: np.random.Generator) -> list[str]:
    """One phrasing per run of equal phases, drawn from `TEMPLATES` with `rng`."""
    texts: list[str] = []
    for t, phase in enumerate(phases):
        if t == 0 or phase != phases[t - 1]:
            template = TEMPLATES[phase][int(rng.integers(len(TEMPLATES[phase])))]
            text = template.format(task=task_text(task))
        texts.append(text)
    return texts


def episode_rng(seed: int, episode_id: str) -> np.random.Generator:
    """A generator for one episode that does not depend on the order of episodes or on the process
    (Python's `hash()` of a string changes between processes)."""
    digest = hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def annotate_episodes(episodes: list[Episode], mode: str, cfg: AnnotationConfig) -> list[Episode]:
    """Episodes with `step_instructions` set for `mode` (`data.instructions`):

    metadata   unchanged (every step trains on the episode's instruction)
    annotated  each step's phrasing of its phase
    both       per step, a seeded choice (even odds) between the episode's instruction and the phrasing

    Returns new Episode objects; the inputs are not modified.
    """
    if mode == "metadata":
        return list(episodes)
    if mode not in ("annotated", "both"):
        raise ConfigError(
            f"data.instructions={mode!r} is not valid; choose one of ['metadata', 'annotated', 'both']"
        )
    out = []
    for episode in episodes:
        rng = episode_rng(cfg.seed, episode.episode_id)
        annotated = annotate_steps(classify_phases(episode.actions, cfg), episode.instruction, rng)
        if mode == "both":
            use_metadata = rng.random(episode.num_steps) < 0.5
            annotated = [episode.instruction if m else a for m, a in zip(use_metadata, annotated)]
        out.append(dataclasses.replace(episode, step_instructions=annotated))
    return out
