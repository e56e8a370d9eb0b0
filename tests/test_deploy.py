"""The policy server and the robot client over loopback: the same actions as in-process evaluation,
hostile requests answered or cut off while others are served, a killed server and late inference
met with a held safe command and a reconnect, concurrent clients kept apart."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from vla.config.deploy import ControlSettings, ServerSettings
from vla.config.sim import EvalSettings, SimSettings
from vla.deploy import wire
from vla.deploy.client import PolicyClient
from vla.deploy.controller import drive_episodes, run_episode
from vla.deploy.oracle import ExpertOracle
from vla.deploy.robot import SimAthena
from vla.deploy.server import PolicyServer, ServerThread
from vla.sim.athena import HOME_POSE, JOINT_NAMES, AthenaRobot
from vla.sim.evaluate import evaluate_policy
from vla.sim.safety import SafetyFilter

SIM = SimSettings(image_size=64)
SEED = 1_000_000
FRAME = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SIM) as robot:
        yield robot


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny random model (l1 head, chunks of 4 x 23 joint targets), saved and loaded from its folder."""
    from test_l1_head import perturb, tiny

    from vla.inference import load_policy

    folder = tmp_path_factory.mktemp("tiny23")
    perturb(tiny("l1", False, d=23, chunk=4)).save_pretrained(folder)
    return load_policy(folder)


class Recording:
    """Wraps a policy and keeps every chunk it returned."""

    def __init__(self, policy):
        self.policy, self.info, self.chunks = policy, policy.info, []

    def __call__(self, images, instructions):
        actions = self.policy(images, instructions)
        self.chunks.extend(actions)
        return actions

    def act(self, image, instruction, state=None):
        chunk = self.policy.act(image, instruction, state)
        self.chunks.append(chunk)
        return chunk


def settings(url: str, **changes) -> ControlSettings:
    return ControlSettings(**{"url": url, "request_timeout_s": 1.0, "connect_timeout_s": 1.0, **changes})


def serve(policy, **changes) -> ServerThread:
    return ServerThread(PolicyServer(policy, ServerSettings(**{"port": 0, **changes})))


def test_through_the_server_the_same_actions_and_outcomes_as_in_process(robot, policy):
    """Sync, lockstep: the chunks (bit for bit), success and final task values equal evaluate_policy's
    on the same held-out seeds, one episode at a time as the robot client runs them."""
    tasks = ["raise_arm", "reach_ball"]
    local, served = Recording(policy), Recording(policy)
    expected = {
        task: evaluate_policy(
            local,
            EvalSettings(tasks=[task], episodes_per_task=1, seed=SEED + i, sim=SIM, gif_episodes=0),
            robot=robot,
        )["per_task"][task]
        for task in tasks
        for i in range(1)
    }
    with serve(served) as url, PolicyClient(settings(url, mode="sync", realtime=False)) as client:
        metadata = client.wait_metadata(5)
        assert (metadata["action_dim"], metadata["chunk_size"], metadata["state_dim"]) == (23, 4, 0)
        safety = SafetyFilter(robot, SIM.safety, SIM.control_hz)
        report = drive_episodes(
            SimAthena(SIM, robot),
            client,
            safety,
            settings(url, mode="sync", realtime=False),
            tasks,
            1,
            SEED,
            metadata,
        )
    assert len(served.chunks) == len(local.chunks) > 10
    np.testing.assert_array_equal(np.stack(served.chunks), np.stack(local.chunks))
    for task in tasks:
        assert report["per_task"][task]["successes"] == expected[task]["successes"]
        assert report["per_task"][task]["final_values"] == expected[task]["final_values"]
    assert report["events"]["held"] == 0 and report["events"]["lost"] == 0


def test_the_expert_served_with_chunks_succeeds_as_in_process(robot):
    """The scripted expert (one action per query, as evaluation's baseline) served as a policy: the
    same success and final task values as in-process."""
    with serve(ExpertOracle(robot, chunk_size=1)) as url:
        control = settings(url, mode="sync", realtime=False)
        with PolicyClient(control) as client:
            metadata = client.wait_metadata(5)
            safety = SafetyFilter(robot, SIM.safety, SIM.control_hz)
            sim = SimAthena(SIM, robot)
            report = drive_episodes(
                sim, client, safety, control, ["raise_arm", "lift_knee"], 2, SEED, metadata
            )
    expected = evaluate_policy(
        "expert",
        EvalSettings(tasks=["raise_arm", "lift_knee"], episodes_per_task=2, sim=SIM, gif_episodes=0),
        robot=robot,
    )
    assert report["success_rate"] == expected["success_rate"] == 1.0
    for task in ("raise_arm", "lift_knee"):
        assert report["per_task"][task]["final_values"] == expected["per_task"][task]["final_values"]


def request(conn, payload) -> dict:
    conn.send(payload)
    return wire.unpack(conn.recv(timeout=5))


def test_hostile_requests_get_an_error_or_lose_their_connection_and_others_are_served(policy):
    good = {"type": "infer", "image": FRAME, "instruction": "raise your left arm", "id": 1}
    with serve(policy, max_message_bytes=2**17) as url:
        with connect(url, proxy=None, compression=None) as conn:
            assert wire.unpack(conn.recv(timeout=5))["type"] == "metadata"
            cases = {
                "dtype float32": {**good, "image": np.full((64, 64, 3), np.nan, np.float32)},
                "image has shape [64, 64]": {**good, "image": FRAME[:, :, 0]},
                "instruction": {**good, "instruction": ""},
                "reads no robot state": {**good, "state": np.zeros(47, np.float32)},
                "type='explode'": {**good, "type": "explode"},
                "does not fill shape": {
                    **good,
                    "image": {"__ndarray__": True, "dtype": "|u1", "shape": [64, 64, 3], "data": b"x"},
                },
                "numbers only": {
                    **good,
                    "image": {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"x" * 8},
                },
            }
            for expected, message in cases.items():
                reply = request(conn, msgpack.packb(message, default=wire._encode, use_bin_type=True))
                assert reply["type"] == "error" and expected in reply["error"], (expected, reply)
            assert "not a msgpack message" in request(conn, b"\xc1\xff garbage")["error"]
            assert "a map" in request(conn, msgpack.packb([1, 2, 3]))["error"]
            assert "not text" in request(conn, "hello")["error"]
            # After all that, the same connection still gets its chunk.
            reply = request(conn, wire.pack(good))
            assert reply["type"] == "actions" and reply["actions"].shape == (4, 23) and reply["id"] == 1
            assert reply["timing"]["server_ms"] >= reply["timing"]["infer_ms"] > 0
            health = request(conn, wire.pack({"type": "health", "id": 2}))
            assert health["ok"] and health["errors"] == 10 and health["requests"] == 1
        # A frame over max_size closes that connection (1009) and only that one.
        with (
            connect(url, proxy=None, compression=None) as other,
            connect(url, proxy=None, compression=None, max_size=None) as big,
        ):
            other.recv(timeout=5), big.recv(timeout=5)
            big.send(b"\x00" * 2**18)
            with pytest.raises(Exception) as closed:
                big.recv(timeout=5)
            assert "1009" in str(closed.value)
            assert request(other, wire.pack(good))["type"] == "actions"


def test_a_client_that_sends_half_a_message_and_stalls_is_cut_off_others_served(policy):
    good = wire.pack({"type": "infer", "image": FRAME, "instruction": "wave", "id": 7})
    with serve(policy, ping_interval_s=0.2, ping_timeout_s=0.3) as url:
        port = int(url.rsplit(":", 1)[1])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert b"101" in raw.recv(4096).split(b"\r\n")[0]
        # A masked binary frame announcing 4096 bytes, of which 100 are sent.
        raw.sendall(bytes([0x82, 0x80 | 126]) + (4096).to_bytes(2, "big") + os.urandom(4) + b"x" * 100)
        with connect(url, proxy=None, compression=None) as conn:
            conn.recv(timeout=5)
            assert request(conn, good)["type"] == "actions"  # served while the other one stalls
        start = time.monotonic()
        while raw.recv(4096):  # pings and finally a close frame, then the server hangs up
            assert time.monotonic() - start < 5, "the stalled connection was never closed"
        raw.close()


def test_concurrent_clients_each_get_their_own_chunks(policy):
    frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    expected = [policy.act(f, "reach the red ball") for f in frames]
    errors = []

    def robot_client(i: int, url: str) -> None:
        with PolicyClient(settings(url)) as client:
            client.wait_metadata(5)
            for _ in range(10):
                rid = client.submit({"image": frames[i], "instruction": "reach the red ball"})
                reply = client.poll(5)
                if reply["id"] != rid or not np.array_equal(reply["actions"], expected[i]):
                    errors.append((i, reply))

    with serve(policy) as url:
        threads = [threading.Thread(target=robot_client, args=(i, url)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors


def held_commands_are_the_last_safe_one(result) -> None:
    commands = result["commands"]
    assert result["held_ticks"], "nothing was held"
    for t in result["held_ticks"]:
        if t > 0:
            np.testing.assert_array_equal(commands[t], commands[t - 1])


def test_late_inference_holds_the_last_safe_command(robot, policy):
    """Every chunk 300 ms late at 25 Hz: the robot holds still while it waits, never runs ahead."""
    with serve(policy, inject_delay_ms=300) as url:
        control = settings(url, mode="sync")
        with PolicyClient(control) as client:
            metadata = client.wait_metadata(5)
            sim = SimAthena(SIM, robot)
            spec = sim.start("raise_arm", SEED)
            safety = SafetyFilter(robot, SIM.safety, SIM.control_hz)
            result = run_episode(sim, client, safety, control, spec.instruction, 25, metadata)
    assert result["steps"] == 25 and 1 <= result["events"]["chunks"] < 25 / 4
    assert result["events"]["held"] >= 3 * result["events"]["chunks"]  # ~7 ticks per 300 ms
    held_commands_are_the_last_safe_one(result)


def test_server_killed_mid_episode_client_holds_and_reconnects(robot, policy):
    server = PolicyServer(policy, ServerSettings(port=0))
    thread = ServerThread(server)
    url = thread.start()
    control = settings(url, mode="async", request_timeout_s=0.3, reconnect_backoff_s=0.05)
    restarted = []

    def outage() -> None:
        time.sleep(0.6)
        thread.stop()
        time.sleep(0.6)
        again = ServerThread(PolicyServer(policy, ServerSettings(port=server.port)))
        again.start()
        restarted.append(again)

    with PolicyClient(control) as client:
        metadata = client.wait_metadata(5)
        sim = SimAthena(SIM, robot)
        spec = sim.start("raise_arm", SEED)
        safety = SafetyFilter(robot, SIM.safety, SIM.control_hz)
        killer = threading.Thread(target=outage)
        killer.start()
        result = run_episode(sim, client, safety, control, spec.instruction, 60, metadata)  # 2.4 s
        killer.join()
        events = dict(client.events)
    restarted[0].stop()
    assert result["steps"] == 60
    assert events["connects"] == 2 and events["disconnects"] >= 1
    assert result["events"]["held"] >= 10  # ~0.6 s of outage at 25 Hz, held
    held_commands_are_the_last_safe_one(result)
    late = [t for t in range(40, 60) if t not in result["held_ticks"]]
    assert late, "no chunk after the server came back"


@pytest.mark.slow
def test_serve_and_run_robot_entry_points(tmp_path):
    """make serve / make run-robot as subprocesses: the robot finishes its episode through the server,
    writes robot.json, and the server stops cleanly on SIGTERM."""
    import json
    import signal
    import subprocess
    import sys

    from test_l1_head import perturb, tiny

    perturb(tiny("l1", False, d=23, chunk=4)).save_pretrained(tmp_path / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(__file__))
    server = subprocess.Popen(
        [
            sys.executable,
            "scripts/serve.py",
            f"checkpoint={tmp_path / 'model'}",
            f"server.port={port}",
            f"hydra.run.dir={tmp_path / 'serve'}",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        robot = subprocess.run(
            [
                sys.executable,
                "scripts/run_robot.py",
                f"control.url=ws://127.0.0.1:{port}",
                "control.connect_timeout_s=10",
                "tasks=[raise_arm]",
                "episodes_per_task=1",
                "image_size=64",
                f"output_dir={tmp_path / 'robot'}",
                f"hydra.run.dir={tmp_path / 'robot'}",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert robot.returncode == 0, robot.stderr[-3000:]
        report = json.loads((tmp_path / "robot" / "robot.json").read_text())
        assert report["episodes"] == 1 and report["events"]["chunks"] > 0
        assert report["connection"]["connects"] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out[-3000:]
    assert "stopped:" in out


WAIST = JOINT_NAMES.index("waist_yaw")


def tick_action(tick: int) -> np.ndarray:
    """The action a fake policy predicts for control tick `tick`: home, waist turned by 2 mrad per tick."""
    action = HOME_POSE.copy()
    action[WAIST] = 0.002 * tick
    return action


class FollowingRobot:
    """A robot that reaches every command at once and counts its ticks (no physics, no camera)."""

    control_hz = 1000  # realtime pacing at 1 ms per tick: the lags below are counted in ticks

    def __init__(self) -> None:
        self.ticks, self.q = 0, HOME_POSE.copy()

    def image(self):
        return FRAME

    def joint_positions(self):
        return self.q.copy()

    def apply(self, targets) -> None:
        self.q, self.ticks = np.asarray(targets, dtype=np.float64).copy(), self.ticks + 1


class LaggingClient:
    """A policy server whose chunk for the observation of tick t0 (actions for t0..t0+K-1) becomes
    available `lag` robot ticks after it was asked for."""

    def __init__(self, robot: FollowingRobot, chunk: int, lag: int) -> None:
        self.robot, self.chunk, self.lag, self.asked = robot, chunk, lag, []

    def submit(self, request) -> int:
        self.asked.append((len(self.asked) + 1, request["step"], self.robot.ticks))
        return len(self.asked)

    def poll(self, timeout=None):
        for rid, step, at in self.asked:
            if at is not None and self.robot.ticks >= at + self.lag:
                self.asked[rid - 1] = (rid, step, None)
                actions = np.stack([tick_action(step + k) for k in range(self.chunk)])
                return {"type": "actions", "id": rid, "actions": actions, "roundtrip_ms": 0.0}
        return None


def run_lagging(robot, mode: str, chunk: int, lag: int, steps: int = 120) -> dict:
    fake = FollowingRobot()
    client = LaggingClient(fake, chunk, lag)
    safety = SafetyFilter(robot, SIM.safety, SIM.control_hz)
    control = ControlSettings(mode=mode, request_timeout_s=60.0)
    metadata = {"chunk_size": chunk, "state_dim": 0, "control_hz": fake.control_hz}
    return run_episode(fake, client, safety, control, "turn", steps, metadata)


def executed_ticks(result) -> list[int | None]:
    """For each tick, which tick's predicted action ran (None: held)."""
    held = set(result["held_ticks"])
    return [None if t in held else round(float(c[WAIST]) / 0.002) for t, c in enumerate(result["commands"])]


@pytest.mark.parametrize("lag", [1, 3, 5, 7])
def test_async_keeps_chunks_on_time_whenever_the_lag_is_shorter_than_a_chunk(robot, lag):
    """Chunks of 8 answered `lag` ticks late: once the lag is measured (two chunks), every tick runs the
    action predicted for that very tick: nothing held, nothing run early or late. (A fixed request
    at half the chunk left, as before, held ticks whenever the lag was over 4.)"""
    result = run_lagging(robot, "async", chunk=8, lag=lag)
    ran = executed_ticks(result)
    settled = 2 * (lag + 8)
    assert ran[settled:] == list(range(settled, len(ran)))
    assert result["lag_ticks"][2:] == [lag] * len(result["lag_ticks"][2:])


@pytest.mark.parametrize("lag", [8, 10, 14])
def test_async_with_a_lag_of_a_chunk_or_more_is_never_worse_than_sync(robot, lag):
    """No chunk can arrive before its first action is due: async then runs each chunk whole from its
    arrival, as sync does, never an action past its chunk (no extrapolation), and holds no more
    than sync in the same time."""
    runs = {mode: run_lagging(robot, mode, chunk=8, lag=lag) for mode in ("async", "sync")}
    for mode, result in runs.items():
        ran = executed_ticks(result)
        # Whole chunks of 8 consecutive predicted actions, each run once, in order, between holds.
        done = [r for r in ran if r is not None]
        assert done == sorted(set(done)), mode
        assert len(done) >= 8 * (120 // (lag + 8)), mode
        held = result["held_ticks"]
        assert all(ran[t + 1] == ran[t] + 1 for t in range(len(ran) - 1) if None not in ran[t : t + 2])
        assert held[:lag] == list(range(lag)), mode  # nothing to run before the first chunk
    assert runs["async"]["events"]["held"] <= runs["sync"]["events"]["held"]


@pytest.mark.slow
def test_bench_serve_entry_point_smoke(tmp_path):
    """make bench-serve, shrunk: every section runs through Hydra's config and writes its report."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(__file__))
    out = tmp_path / "bench"
    bench = subprocess.run(
        [
            sys.executable,
            "scripts/bench_serve.py",
            "requests=20",
            "clients=2",
            "seconds=2",
            "tasks=[turn_torso]",
            "episodes_per_task=1",
            "delays_ms=[300]",
            f"output_dir={out}",
            f"hydra.run.dir={out}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    report = json.loads((out / "bench_serve.json").read_text())
    assert report["overhead"]["requests"] == 20 and report["overhead"]["overhead_ms_p50"] > 0
    assert report["concurrency"]["client_errors"] == 0 and report["concurrency"]["requests"] > 2
    assert set(report["delay"]) == {"async_300ms", "sync_300ms"}
    for cell in report["delay"].values():  # 300 ms is over the 8-tick chunk at 25 Hz: runs as sync does
        assert cell["episodes"] == 1 and cell["held_per_episode"] >= 7
    assert report["delay"]["async_300ms"]["success_rate"] >= report["delay"]["sync_300ms"]["success_rate"]


def test_bench_serve_refuses_a_bad_mode():
    from vla.config.base import ConfigError
    from vla.config.deploy import BenchServeConfig

    with pytest.raises(ConfigError, match="modes"):
        BenchServeConfig(modes=["async", "later"], output_dir="x")
