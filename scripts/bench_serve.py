"""Measure the policy server on loopback: its overhead beyond the model, concurrent robot clients,
success under injected inference delay (async vs sync chunks), and a trained policy through the server.

python scripts/bench_serve.py                                   # make bench-serve; conf/bench_serve.yaml
python scripts/bench_serve.py seconds=300 requests=0 episodes_per_task=0   # an 8-client soak only
python scripts/bench_serve.py checkpoint=outputs/train/<date>/<time> requests=0 seconds=0 episodes_per_task=0
1. overhead: a tiny random 23-DoF policy (chunks of 4), `requests` sequential requests from one client;
   per request the client's round trip minus the model's own time (infer_ms, measured in the server).
2. concurrency: `clients` clients in threads request chunks from the tiny policy for `seconds` s;
   errors and this process's resident memory (server and clients) sampled every second.
3. delay: the scripted expert served as a policy (vla.deploy.oracle, chunks of `chunk`), so success
   measures only the deployment path; the simulated athena runs in real time at 25 Hz through the
   client with each of `delays_ms` added to every reply, in each of `modes`.
4. checkpoint: a trained policy in its training scene, through the server under each of
   `policy_delays_ms` and `modes` (real time), and in-process (`evaluate_policy`) on the same seeds.
Writes bench_serve.json to the run folder.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import threading
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import BenchServeConfig, register_configs, to_object  # noqa: E402

register_configs()


def rss_mb() -> float:
    """Current resident memory of this process (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_policy():
    from vla.config import LayoutConfig, ModelConfig, QuantizationConfig, TinyArchitecture
    from vla.model.policy import Policy, policy_info
    from vla.training.build import build_base_model

    d = 23
    stats = {"q01": [-1.0] * d, "q99": [1.0] * d, "mean": [0.0] * d, "std": [1.0] * d, "min": [-1.0] * d}
    stats = {"athena": {"action": {**stats, "max": [1.0] * d, "mask": [True] * d}, "num_transitions": 1}}
    cfg = ModelConfig(
        architecture=TinyArchitecture(image_size=28),
        action_head="l1",
        proprio=False,
        layout=LayoutConfig(chunk_size=4),
    )
    model = build_base_model(cfg, QuantizationConfig(), stats).eval()
    return Policy(model, policy_info(model, "tiny-random", "torch", "run", hz=25.0))


def overhead(policy, n: int) -> dict:
    from vla.config.deploy import ControlSettings, ServerSettings
    from vla.deploy.client import PolicyClient
    from vla.deploy.server import PolicyServer, ServerThread

    frame = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    with (
        ServerThread(PolicyServer(policy, ServerSettings(port=0))) as url,
        PolicyClient(ControlSettings(url=url)) as c,
    ):
        c.wait_metadata(10)
        rows = []
        for i in range(n + 20):
            c.submit({"image": frame, "instruction": "reach the red ball with your left hand", "step": i})
            reply = c.poll(10)
            if i >= 20:  # warm-up
                rows.append((reply["roundtrip_ms"], reply["timing"]["infer_ms"]))
    rows = np.array(rows)
    extra = rows[:, 0] - rows[:, 1]
    return {
        "requests": n,
        "image": "224x224",
        "overhead_ms_p50": float(np.percentile(extra, 50)),
        "overhead_ms_p99": float(np.percentile(extra, 99)),
        "model_ms_p50": float(np.percentile(rows[:, 1], 50)),
    }


def through_server(policy, sim, control: dict, delay_ms: float, tasks, episodes: int, seed: int, robot):
    """Episodes seed.. of `tasks` on the simulated athena driven through a server for `policy`."""
    from vla.config.deploy import ControlSettings, ServerSettings
    from vla.deploy.client import PolicyClient
    from vla.deploy.controller import drive_episodes
    from vla.deploy.robot import SimAthena
    from vla.deploy.server import PolicyServer, ServerThread
    from vla.sim.safety import SafetyFilter

    server = PolicyServer(policy, ServerSettings(port=0, inject_delay_ms=delay_ms))
    with ServerThread(server) as url, PolicyClient(ControlSettings(url=url, **control)) as client:
        metadata = client.wait_metadata(10)
        safety = SafetyFilter(robot, sim.safety, sim.control_hz)
        r = drive_episodes(
            SimAthena(sim, robot), client, safety, client.settings, tasks, episodes, seed, metadata
        )
    return {
        "success_rate": r["success_rate"],
        "successes": {task: v["successes"] for task, v in r["per_task"].items()},
        "held_per_episode": r["events"]["held"] / r["episodes"],
        "late_chunks": r["events"]["late"],
        "episodes": r["episodes"],
    }


def delays(cfg: BenchServeConfig) -> dict:
    from vla.config.sim import SimSettings
    from vla.deploy.oracle import ExpertOracle
    from vla.sim.athena import AthenaRobot

    sim = SimSettings(image_size=64)
    out = {}
    with AthenaRobot(sim) as robot:
        oracle = ExpertOracle(robot, cfg.chunk)
        for delay in cfg.delays_ms:
            for mode in cfg.modes:
                cell = through_server(
                    oracle, sim, {"mode": mode}, delay, cfg.tasks, cfg.episodes_per_task, cfg.seed, robot
                )
                out[f"{mode}_{delay:g}ms"] = cell
                print(f"expert, delay {delay:g} ms {mode}: {cell}", flush=True)
    return out


def trained(cfg: BenchServeConfig) -> dict:
    """The policy in cfg.checkpoint in its training scene: in-process, then through the server."""
    from vla.config import SampleDataConfig
    from vla.config.sim import EvalSettings
    from vla.inference import load_policy
    from vla.inference.policy import training_scene
    from vla.sim.athena import AthenaRobot
    from vla.sim.evaluate import evaluate_policy

    policy = load_policy(cfg.checkpoint, cfg.backend)
    scene = training_scene(cfg.checkpoint)
    sample = to_object(scene, SampleDataConfig) if scene is not None else SampleDataConfig()
    sim = sample.sim_settings(cfg.sim)
    n = cfg.policy_episodes_per_task
    out = {"scene": {"camera": sim.camera, "image_size": sim.image_size, "control_hz": sim.control_hz}}
    with AthenaRobot(sim) as robot:
        settings = EvalSettings(tasks=cfg.tasks, episodes_per_task=n, seed=cfg.seed, sim=sim, gif_episodes=0)
        local = evaluate_policy(policy, settings, robot=robot)
        out["in_process"] = {
            "success_rate": local["success_rate"],
            "successes": {t: v["successes"] for t, v in local["per_task"].items()},
        }
        print(f"{cfg.checkpoint} in-process: {out['in_process']}", flush=True)
        for delay in cfg.policy_delays_ms:
            for mode in cfg.modes:
                cell = through_server(policy, sim, {"mode": mode}, delay, cfg.tasks, n, cfg.seed, robot)
                out[f"{mode}_{delay:g}ms"] = cell
                print(f"policy, delay {delay:g} ms {mode}: {cell}", flush=True)
    return out


def concurrency(policy, clients: int, seconds: float) -> dict:
    """Clients in threads for `seconds` s; RSS sampled every second once they all run."""
    from vla.config.deploy import ControlSettings, ServerSettings
    from vla.deploy.client import PolicyClient
    from vla.deploy.server import PolicyServer, ServerThread

    counts, errors = [0] * clients, []
    start_rss = None

    def robot_client(i: int, url: str, stop: float) -> None:
        frame = np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8)
        with PolicyClient(ControlSettings(url=url, request_timeout_s=10)) as client:
            client.wait_metadata(10)
            while time.monotonic() < stop:
                rid = client.submit({"image": frame, "instruction": "raise your right arm", "step": 0})
                reply = client.poll(15)
                if reply is None or reply.get("id") != rid or reply["type"] != "actions":
                    errors.append(reply)
                else:
                    counts[i] += 1

    server = PolicyServer(policy, ServerSettings(port=0))
    with ServerThread(server) as url:
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=robot_client, args=(i, url, stop)) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(min(2.0, seconds / 4))
        samples = [rss_mb()]
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            samples.append(rss_mb())
        for t in threads:
            t.join()
        start_rss, end_rss = samples[0], samples[-1]
        errors_server = server.stats["errors"]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sum(counts),
        "min_per_client": min(counts),
        "client_errors": len(errors),
        "server_errors": errors_server,
        "rss_mb_start": round(start_rss, 1),
        "rss_mb_end": round(end_rss, 1),
        "rss_mb_max": round(max(samples), 1),
    }


def run(cfg: BenchServeConfig) -> dict:
    """Run the sections; returns the report written to `<output_dir>/bench_serve.json`."""
    report = {}
    if cfg.requests or (cfg.clients and cfg.seconds):
        policy = tiny_policy()
    if cfg.requests:
        report["overhead"] = overhead(policy, cfg.requests)
        print(json.dumps(report["overhead"]), flush=True)
    if cfg.clients and cfg.seconds:
        report["concurrency"] = concurrency(policy, cfg.clients, cfg.seconds)
        print(json.dumps(report["concurrency"]), flush=True)
    if cfg.episodes_per_task and cfg.delays_ms:
        report["delay"] = delays(cfg)
    if cfg.checkpoint is not None:
        report["checkpoint"] = {"path": cfg.checkpoint, **trained(cfg)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench_serve")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco
    logging.basicConfig(level=logging.ERROR)
    with user_errors():
        report = run(to_object(cfg, BenchServeConfig))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
