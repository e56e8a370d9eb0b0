"""Closed-loop evaluation on the simulated athena: success rate per task, with the scripted expert and a
random policy as baselines through the same loop, and reports (eval.json, eval.md, GIFs).

A policy is any callable `policy(images, instructions) -> actions`: `images` a list of B RGB uint8
[H, W, 3] frames from the camera (sim.camera), `instructions` B strings, `actions` [B, 23] joint targets or
[B, K, 23] action chunks (all K steps are executed before the policy is asked again, as OpenVLA-OFT
and LeRobot's ACT do; `EvalSettings.execute_steps` runs only the first N of each chunk). A `Policy` trained with the robot state (`info.state_dim` > 0) is called as
`policy(images, instructions, states)` with each robot's 47-value state (`AthenaRobot.state`). Actions pass through the safety filter (`vla.sim.safety`) unless
`sim.safety.enabled` is false; every intervention is counted in the result.

Episodes of a task run in lockstep, so the policy sees batches of up to `episodes_per_task` frames.
During training, `evaluate_policy(policy, settings)["success_rate"]` is `val/success_rate`.
`EvalSettings.swap_color` probes whether a policy follows the colour word of reach_ball's instruction;
`EvalSettings.disturbance` starts episodes away from home and/or pushes the robot (the same draws on a
scene for the policy and the baselines).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla.config.sim import EvalSettings
from vla.sim.athena import NUM_JOINTS, AthenaRobot
from vla.sim.env import AthenaEnv
from vla.sim.safety import INTERVENTIONS, SafetyFilter
from vla.sim.tasks import swapped_color_instruction

Policy = Callable[[list[np.ndarray], list[str]], np.ndarray]
_BORDER = 3  # pixels of green (success) or red (failure) around each GIF panel


def check_actions(actions, batch: int) -> np.ndarray:
    """Policy output -> float64 [B, K, 23]; a wrong size raises an error naming both sizes."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim == 2:
        actions = actions[:, None, :]
    if actions.ndim != 3 or actions.shape[0] != batch:
        raise ValueError(
            f"policy returned actions of shape {actions.shape}; expected [{batch}, {NUM_JOINTS}] or "
            f"[{batch}, K, {NUM_JOINTS}] for a batch of {batch} frames"
        )
    if actions.shape[2] != NUM_JOINTS:
        raise ValueError(
            f"policy predicts {actions.shape[2]}-dimensional actions but the athena robot has {NUM_JOINTS} "
            f"joints (vla.sim.athena.JOINT_NAMES); was the model trained on another robot's data?"
        )
    if actions.shape[1] == 0:
        raise ValueError("policy returned an empty action chunk (K = 0)")
    return actions


def evaluate_policy(
    policy: Policy | str,
    settings: EvalSettings,
    *,
    robot: AthenaRobot | None = None,
    gif_dir: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Run `settings.episodes_per_task` held-out episodes of every task with `policy`.

    Args:
        policy: a callable (see the module docstring), or "expert" / "random" for the baselines.
        settings: tasks, episode count, first seed (held out from generation), sim and safety settings.
        robot: an `AthenaRobot` to reuse (its image size must match `settings.sim`); made and closed here
            when None.
        gif_dir: write `<task>.gif` there, with the first `settings.gif_episodes` rollouts side by side.

    Returns {"success_rate", "ci95", "episodes", "seconds_per_episode", "interventions": {name: count},
    "per_task": {task: {"success_rate", "successes", "ci95" (95% Wilson interval), "goal_met_rate", "named_ball_rate", "final_values",
    "episodes", "seconds_per_episode", "interventions", "failures": [seeds]}}}.
    """
    if isinstance(policy, str) and policy not in ("expert", "random"):
        raise ValueError(f"policy={policy!r}: pass a callable, 'expert' or 'random'")
    own_robot = robot is None
    robot = robot or AthenaRobot(settings.sim)
    try:
        per_task = {}
        for task_index, task in enumerate(settings.tasks):
            per_task[task] = _evaluate_task(policy, settings, robot, task, task_index, gif_dir, progress)
    finally:
        if own_robot:
            robot.close()
    episodes = sum(r["episodes"] for r in per_task.values())
    successes = sum(r["successes"] for r in per_task.values())
    return {
        "success_rate": successes / episodes,
        "ci95": wilson_interval(successes, episodes),
        "episodes": episodes,
        "seconds_per_episode": sum(r["seconds_per_episode"] * r["episodes"] for r in per_task.values())
        / episodes,
        "interventions": {k: sum(r["interventions"][k] for r in per_task.values()) for k in INTERVENTIONS},
        "per_task": per_task,
    }


def _evaluate_task(
    policy: Policy | str,
    settings: EvalSettings,
    robot: AthenaRobot,
    task: str,
    task_index: int,
    gif_dir: str | Path | None,
    progress: bool,
) -> dict:
    start = time.perf_counter()
    count = settings.episodes_per_task
    seeds = [settings.seed + i for i in range(count)]
    envs = [AthenaEnv(robot=robot) for _ in seeds]
    filters = [SafetyFilter(robot, settings.sim.safety, settings.sim.control_hz) for _ in seeds]
    specs = [env.reset(task, seed, settings.disturbance) for env, seed in zip(envs, seeds)]
    told = [swapped_color_instruction(s) if settings.swap_color else s.instruction for s in specs]
    for env, safety in zip(envs, filters):
        safety.reset(env.joint_positions())
    rng = np.random.default_rng([settings.seed, task_index])  # the random baseline's stream
    queues: list[deque[np.ndarray]] = [deque() for _ in envs]
    recorded = min(settings.gif_episodes, count) if gif_dir is not None else 0
    frames: list[list[np.ndarray]] = [[] for _ in range(recorded)]
    for _ in tqdm(range(specs[0].num_steps), desc=f"eval {task}", leave=False, disable=not progress):
        images = {i: envs[i].render() for i in range(recorded)}
        need = [i for i, q in enumerate(queues) if not q]
        if need:
            for i, chunk in zip(need, _query(policy, envs, told, need, images, rng)):
                queues[i].extend(chunk[: settings.execute_steps])
        for i, (env, safety) in enumerate(zip(envs, filters)):
            env.step(safety(queues[i].popleft(), env.joint_positions()))
        for i in range(recorded):
            frames[i].append(images[i])
    details = [env.success_details() for env in envs]
    outcomes = [d["success"] for d in details]
    if recorded:
        _write_gif(Path(gif_dir) / f"{task}.gif", frames, outcomes[:recorded], settings.sim.control_hz)
    return {
        "success_rate": float(np.mean(outcomes)),
        "successes": int(sum(outcomes)),
        "ci95": wilson_interval(int(sum(outcomes)), count),  # Wilson score interval of success_rate
        # The task's goal alone (hand at the ball, knee up, ...), ignoring the posture condition.
        "goal_met_rate": float(np.mean([d["goal_met"] for d in details])),
        # reach_ball: the share of episodes whose hand ends nearest the named ball (picked the right one,
        # whether or not it got within the radius), which tells grounding failures from imprecise
        # reaches; None for tasks without distractors.
        "named_ball_rate": _rate([d["named_ball"] for d in details]),
        # The measured quantity at the end of each episode (reach: hand-to-ball distance in m), by seed.
        "final_values": [round(d["value"], 4) for d in details],
        "episodes": count,
        "seconds_per_episode": (time.perf_counter() - start) / count,
        "interventions": {k: sum(f.counts[k] for f in filters) for k in INTERVENTIONS},
        "failures": [seed for seed, ok in zip(seeds, outcomes) if not ok],
    }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% for z = 1.96): unlike the normal approximation
    it stays inside [0, 1] and is not empty at 0/n or n/n."""
    if n <= 0:
        raise ValueError(f"no episodes (n={n})")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _rate(flags: list[bool | None]) -> float | None:
    """The share of True among the flags, or None when the task defines none."""
    return None if flags[0] is None else float(np.mean(flags))


def _query(policy, envs, instructions, need, images, rng) -> np.ndarray:
    """Action chunks [len(need), K, 23] for the episodes in `need`."""
    if policy == "expert":  # privileged: reads its plan from the simulator, not the image
        return np.stack([envs[i].expert_action() for i in need])[:, None]
    if policy == "random":  # uniform joint targets within the model's limits, a fresh draw every step
        limits = envs[0].robot.joint_limits
        return rng.uniform(limits[:, 0], limits[:, 1], size=(len(need), 1, NUM_JOINTS))
    frames = [images[i] if i in images else envs[i].render() for i in need]
    told = [instructions[i] for i in need]
    if getattr(getattr(policy, "info", None), "state_dim", 0):  # a Policy that reads the robot state
        return check_actions(policy(frames, told, np.stack([envs[i].state() for i in need])), len(need))
    return check_actions(policy(frames, told), len(need))


def _write_gif(path: Path, frames: list[list[np.ndarray]], outcomes: list[bool], fps: int) -> None:
    import imageio.v3 as iio

    panels = []
    for episode_frames, ok in zip(frames, outcomes):
        clip = np.stack(episode_frames).copy()
        color = (40, 200, 60) if ok else (220, 40, 40)
        clip[:, :_BORDER], clip[:, -_BORDER:], clip[:, :, :_BORDER], clip[:, :, -_BORDER:] = (color,) * 4
        panels.append(clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(panels, axis=2), extension=".gif", duration=1000 / fps, loop=0)


def evaluate_with_baselines(
    policy: Policy | None,
    settings: EvalSettings,
    out_dir: str | Path,
    name: str = "policy",
    progress: bool = True,
) -> dict:
    """Evaluate `policy` (None: baselines only) and `settings.baselines` on the same held-out episodes;
    writes `eval.json`, `eval.md` and `gifs/<name>/<task>.gif` under `out_dir`; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, Policy | str]] = ([(name, policy)] if policy is not None else []) + [
        (b, b) for b in settings.baselines
    ]
    if not runs:
        raise ValueError("nothing to evaluate: no policy and no baselines")
    results = {}
    with AthenaRobot(settings.sim) as robot:
        for index, (label, candidate) in enumerate(runs):
            gif_dir = out_dir / "gifs" / label if index == 0 or label == "expert" else None
            results[label] = evaluate_policy(
                candidate, settings, robot=robot, gif_dir=gif_dir, progress=progress
            )
    report = {
        "tasks": settings.tasks,
        "episodes_per_task": settings.episodes_per_task,
        "seeds": [settings.seed, settings.seed + settings.episodes_per_task],
        "image_size": settings.sim.image_size,
        "safety": settings.sim.safety.enabled,
        "swap_color": settings.swap_color,
        "disturbance": dataclasses.asdict(settings.disturbance) if settings.disturbance.enabled else None,
        "results": results,
    }
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / "eval.md").write_text(markdown_report(report), encoding="utf-8")
    return report


def _cell(result: dict) -> str:
    """'85% (17/20) [64-95]': the rate, the count and its 95% Wilson interval in percent."""
    n = result["episodes"]
    successes = round(result["success_rate"] * n)
    lo, hi = result.get("ci95") or wilson_interval(successes, n)
    return f"{result['success_rate']:.0%} ({successes}/{n}) [{lo:.0%}-{hi:.0%}]"


def markdown_report(report: dict) -> str:
    """Success per task (rows) and policy (columns), then safety interventions per policy."""
    results = report["results"]
    names = list(results)
    lines = [
        f"Closed-loop success on athena ({report['episodes_per_task']} held-out episodes per task, seeds "
        f"{report['seeds'][0]}-{report['seeds'][1] - 1}, {report['image_size']} px, "
        f"safety {'on' if report['safety'] else 'off'}; [95% Wilson interval])"
        + (
            "; language probe: reach_ball's instructions name the colour of the distractor nearest the "
            "named ball (swap_color), success is still scored against the named ball"
            if report.get("swap_color")
            else ""
        )
        + (f"; disturbed (sim.disturbance): {report['disturbance']}" if report.get("disturbance") else ""),
        "",
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for task in report["tasks"]:
        cells = [_cell(r["per_task"][task]) for r in results.values()]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{_cell(r)}**" for r in results.values()) + " |")
    for task in report["tasks"]:  # which failures were the wrong ball, which near misses
        rates = [r["per_task"][task].get("named_ball_rate") for r in results.values()]
        if rates[0] is not None:
            lines.append(
                f"| {task}: hand ends nearest the named ball | "
                + " | ".join(f"{v:.0%}" for v in rates)
                + " |"
            )
    lines += ["", "Safety interventions (steps changed, summed over all episodes):", ""]
    lines += [
        "| policy | " + " | ".join(INTERVENTIONS) + " | s/episode |",
        "|---|" + "---:|" * (len(INTERVENTIONS) + 1),
    ]
    for label, r in results.items():
        counts = " | ".join(str(r["interventions"][k]) for k in INTERVENTIONS)
        lines.append(f"| {label} | {counts} | {r['seconds_per_episode']:.2f} |")
    return "\n".join(lines) + "\n"


def log_to_wandb(report: dict, out_dir: str | Path, prefix: str = "eval") -> None:
    """Log success rates, the markdown table and the GIFs to the active W&B run (`wandb.init` first).
    A `swap_color` report logs under `<prefix>_swap_color/...`, apart from ordinary evaluations."""
    import wandb

    if wandb.run is None:
        raise RuntimeError("log_to_wandb needs an active run: call wandb.init(...) first")
    if report.get("swap_color"):
        prefix = f"{prefix}_swap_color"
    metrics = {}
    for label, r in report["results"].items():
        metrics[f"{prefix}/{label}/success_rate"] = r["success_rate"]
        for task, t in r["per_task"].items():
            metrics[f"{prefix}/{label}/success_rate/{task}"] = t["success_rate"]
            if t.get("named_ball_rate") is not None:
                metrics[f"{prefix}/{label}/named_ball_rate/{task}"] = t["named_ball_rate"]
    for gif in sorted(Path(out_dir).glob("gifs/*/*.gif")):
        metrics[f"{prefix}/{gif.parent.name}/rollouts/{gif.stem}"] = wandb.Video(str(gif), format="gif")
    wandb.log(metrics)
