"""Measure the policy server on loopback: its overhead beyond the model, success under injected
inference delay (async vs sync chunks), and concurrent robot clients.

python scripts/bench_serve.py                       # --requests 1000 --episodes 2 --clients 8 --seconds 20
1. overhead: a tiny random 23-DoF policy (chunks of 4), `--requests` sequential requests from one client;
   per request the client's round trip minus the model's own time (infer_ms, measured in the server).
2. delay: the scripted expert served as a policy (vla.deploy.oracle, chunks of `--chunk`), so success
   measures only the deployment path; the simulated athena runs in real time at 25 Hz through the
   client with 0/100/200/400 ms added to every reply, async and sync.
3. concurrency: `--clients` clients in threads request chunks from the tiny policy for `--seconds` s;
   errors and the server process's resident memory at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def delays(chunk: int, episodes: int, tasks: list[str]) -> dict:
    from vla.config.deploy import ControlSettings, ServerSettings
    from vla.config.sim import SimSettings
    from vla.deploy.client import PolicyClient
    from vla.deploy.controller import drive_episodes
    from vla.deploy.oracle import ExpertOracle
    from vla.deploy.robot import SimAthena
    from vla.deploy.server import PolicyServer, ServerThread
    from vla.sim.athena import AthenaRobot
    from vla.sim.safety import SafetyFilter

    sim = SimSettings(image_size=64)
    out = {}
    with AthenaRobot(sim) as robot:
        oracle = ExpertOracle(robot, chunk)
        for delay in (0, 100, 200, 400):
            for mode in ("async", "sync"):
                server = PolicyServer(oracle, ServerSettings(port=0, inject_delay_ms=delay))
                with ServerThread(server) as url, PolicyClient(ControlSettings(url=url, mode=mode)) as client:
                    metadata = client.wait_metadata(10)
                    safety = SafetyFilter(robot, sim.safety, sim.control_hz)
                    r = drive_episodes(
                        SimAthena(sim, robot),
                        client,
                        safety,
                        client.settings,
                        tasks,
                        episodes,
                        1_000_000,
                        metadata,
                    )
                out[f"{mode}_{delay}ms"] = {
                    "success_rate": r["success_rate"],
                    "held_per_episode": r["events"]["held"] / r["episodes"],
                    "episodes": r["episodes"],
                }
                print(f"delay {delay} ms {mode}: {out[f'{mode}_{delay}ms']}", flush=True)
    return out


def concurrency(policy, clients: int, seconds: float) -> dict:
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
        start_rss = rss_mb()
        for t in threads:
            t.join()
        end_rss = rss_mb()
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--tasks", default="raise_arm,reach_ball,turn_torso,lift_knee")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from vla.sim import select_gl_backend

    select_gl_backend()
    import logging

    logging.basicConfig(level=logging.ERROR)
    policy = tiny_policy()
    report = {"overhead": overhead(policy, args.requests)}
    print(json.dumps(report["overhead"]), flush=True)
    report["concurrency"] = concurrency(policy, args.clients, args.seconds)
    print(json.dumps(report["concurrency"]), flush=True)
    report["delay"] = delays(args.chunk, args.episodes, args.tasks.split(","))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
