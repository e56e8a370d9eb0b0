"""Continuous learning (scripts/learn_online.py, vla.learn): the schema, DAgger's labels and mixing,
the versioned dataset's atomic writes, promotion, `init_from`, and small loops end to end (rollouts
through the policy server and robot client, fine-tunes from the deployed weights, resume after a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_factories import make_isaac_dataset

from tests.conftest import FAST_TRAIN, SMALL_SAMPLE, compose_config
from vla.config import ConfigError, LearnOnlineConfig, LearnSettings, TrainConfig
from vla.learn.dataset import LoopError, VersionedDataset
from vla.learn.rounds import should_promote


def train(run_dir: Path, overrides: list[str]) -> dict:
    import train as entry

    return entry.run(compose_config("train", [*FAST_TRAIN, *overrides, f"run_dir={run_dir}"], TrainConfig))


def learn_config(output_dir: Path, start: Path, overrides: list[str] = ()) -> LearnOnlineConfig:
    base = [
        f"start={start}",
        f"output_dir={output_dir}",
        "learn.tasks=[raise_arm]",
        "learn.rounds=2",
        "learn.episodes_per_task=2",
        "learn.eval_episodes_per_task=2",
        "train.max_steps=2",
        "train.val_check_interval=2",
        "logger=csv",
    ]
    return compose_config("learn_online", [*base, *overrides], LearnOnlineConfig)


@pytest.fixture(scope="module")
def start_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("start") / "run"
    train(run_dir, SMALL_SAMPLE)  # a start policy on simulator data
    return run_dir


# --- configuration ---------------------------------------------------------------------------------


def test_shipped_config_composes_and_bad_values_name_the_key(tmp_path):
    cfg = learn_config(tmp_path, tmp_path)
    assert cfg.learn.relabel == "dagger" and cfg.sim.safety.enabled and not cfg.control.realtime
    for override, key in [
        ("learn.relabel=keep_all", "learn.relabel"),
        ("learn.judge=robot", "learn.judge"),
        ("learn.promotion=vibes", "learn.promotion"),
        ("learn.rollout_seed=999990", "learn.rollout_seed"),  # rounds would reach evaluation's seeds
        ("learn.eval_seed=5", "learn.eval_seed"),
        ("learn.beta0=1.5", "learn.beta0"),
        ("sim.safety.enabled=false", "sim.safety.enabled"),
        ("train.val_check_interval=5", "train.val_check_interval"),
        ("train.lr=2", "train.lr"),
        ("learn.episodes_per_task=0", "learn.episodes_per_task"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            learn_config(tmp_path, tmp_path, [override])


def test_beta_schedule_and_round_seeds_are_disjoint_from_training_and_evaluation():
    learn = LearnSettings(beta0=0.8, beta_decay=0.5, rounds=3, episodes_per_task=4)
    assert [learn.beta(r) for r in (1, 2, 3)] == [0.8, 0.4, 0.2]
    assert LearnSettings(relabel="success_only").beta(1) == 0.0
    seeds = [set(learn.round_seeds(r)) for r in range(1, 4)]
    assert all(len(s) == 4 for s in seeds) and not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2])
    assert all(min(s) > 100_000 and max(s) < 1_000_000 for s in seeds)  # generation below, evaluation above


def test_init_from_and_ckpt_path_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="init_from"):
        compose_config(
            "train", [*FAST_TRAIN, "ckpt_path=a", "init_from=b", f"run_dir={tmp_path}"], TrainConfig
        )


# --- DAgger's labels and mixing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def athena():
    from vla.config import SimSettings
    from vla.sim.athena import AthenaRobot

    with AthenaRobot(SimSettings(image_size=56, control_hz=5, camera="upper_body")) as robot:
        yield robot


def test_expert_label_is_the_reference_on_its_path_and_a_bounded_step_back_from_a_drift(athena):
    from vla.learn.relabel import expert_label
    from vla.sim.athena import HOME_POSE
    from vla.sim.tasks import EXPERT_MAX_SPEED, expert_action, sample_episode, task_dims

    spec = sample_episode(athena, "lift_knee", 3)
    for t in range(spec.num_steps):  # on the expert's own path its label is its own plan
        q = expert_action(spec, t - 1) if t else HOME_POSE
        np.testing.assert_allclose(expert_label(spec, t, q, 5), expert_action(spec, t), atol=1e-12)
    dims = task_dims(spec)
    drifted = expert_action(spec, 4).copy()
    drifted[dims] -= 1.0  # a policy that lags 1 rad behind on the task's joints
    label = expert_label(spec, 5, drifted, 5)
    step = label - drifted
    assert np.all(np.abs(step) <= EXPERT_MAX_SPEED / 5 + 1e-12)
    assert np.all(step[dims] > 0.5)  # heads back toward the goal, at the expert's speed
    others = np.setdiff1d(np.arange(23), dims)
    np.testing.assert_allclose(label[others], HOME_POSE[others], atol=1e-12)


class _ConstantPolicy:
    def __init__(self, chunk: int = 3) -> None:
        from vla.model.policy import PolicyInfo

        self.info = PolicyInfo("test", "torch", "run", 23, chunk, 0, 56, "k", 5.0, 47)
        self.calls = 0

    def act(self, image, instruction, state=None):
        self.calls += 1
        return np.full((self.info.chunk_size, 23), 7.0)


def test_mixing_policy_draws_who_drives_per_request_reproducibly(athena):
    from vla.learn.relabel import MixingPolicy
    from vla.sim.tasks import expert_action, sample_episode

    def answers(beta: float, policy=None) -> list[str]:
        mixing = MixingPolicy(
            policy or _ConstantPolicy(), athena, beta, seed=1, round_index=2, tasks=["raise_arm"]
        )
        for step in range(200):
            mixing.act(None, "raise", None, meta={"task": "raise_arm", "seed": 500_001, "step": step})
        return [driver for _, driver in mixing.decisions[("raise_arm", 500_001)]]

    policy = _ConstantPolicy()
    assert set(answers(0.0, policy)) == {"policy"} and policy.calls == 200
    policy = _ConstantPolicy()
    assert set(answers(1.0, policy)) == {"expert"} and policy.calls == 0
    half = answers(0.5)
    assert half == answers(0.5)  # the same coin on a rerun of the round
    assert 70 < half.count("expert") < 130
    mixing = MixingPolicy(_ConstantPolicy(), athena, 1.0, 0, 1, ["raise_arm"])
    chunk = mixing.act(None, "raise", None, meta={"task": "raise_arm", "seed": 4, "step": 6})
    spec = sample_episode(athena, "raise_arm", 4)
    np.testing.assert_allclose(chunk, [expert_action(spec, 6 + k) for k in range(3)])


# --- the versioned dataset and promotion ------------------------------------------------------------


def _episode(steps: int = 4, success: bool = True) -> dict:
    return {
        "images": [np.zeros((8, 8, 3), np.uint8)] * steps,
        "actions": np.zeros((steps, 23), np.float32),
        "states": np.zeros((steps, 47), np.float32),
        "timestamps": np.arange(steps) / 5.0,
        "metadata": {
            "task_description": "raise your left arm",
            "instructions": ["raise"],
            "success": success,
        },
    }


def test_dataset_writes_are_atomic_and_the_union_view_holds_every_round(tmp_path):
    from vla.data.isaac import load_isaac_episodes

    start = tmp_path / "start"
    make_isaac_dataset(start, n_episodes=3, steps=4)
    ds = VersionedDataset(tmp_path / "loop")
    ds.write_manifest(0, {"status": "evaluated", "episodes_dir": str(start)})
    (ds.episodes_dir(1) / ".tmp-raise_arm_000001-dead").mkdir(parents=True)  # a crash mid-write
    ds.write_episode(1, "raise_arm_500000", _episode(), {"executed": np.ones((4, 23))})
    ds.write_episode(1, "raise_arm_500001", _episode(success=False))
    with pytest.raises(LoopError, match="already recorded"):
        ds.write_episode(1, "raise_arm_500000", _episode())
    assert ds.recorded(1) == {"raise_arm_500000", "raise_arm_500001"}  # the temporary folder is not one
    assert ds.manifests() == [ds.manifest(0)]  # round 1 has no manifest until its recording ends
    assert ds.clean_partial(1) == 1 and not list(ds.episodes_dir(1).glob(".tmp-*"))
    ds.write_manifest(1, {"status": "recorded", "episodes_dir": str(ds.episodes_dir(1))})
    view = ds.union_view(1)
    names = sorted(p.name for p in view.iterdir())
    assert names == [
        "r000_episode_000",
        "r000_episode_001",
        "r000_episode_002",
        "r001_raise_arm_500000",
        "r001_raise_arm_500001",
    ]
    loaded = load_isaac_episodes(view)
    assert len(loaded.episodes) == 5 and sum(e.success is False for e in loaded.episodes) == 1
    assert not list(tmp_path.glob("loop/**/.*tmp*"))  # no temporary file or folder left anywhere


def test_a_damaged_manifest_is_named(tmp_path):
    ds = VersionedDataset(tmp_path)
    ds.round_dir(0).mkdir(parents=True)
    (ds.round_dir(0) / "manifest.json").write_text('{"round": 0, "status": "evalu')
    with pytest.raises(LoopError, match="round_000/manifest.json"):
        ds.manifests()


def test_promotion_rules():
    def ev(successes: int, ci: tuple[float, float]) -> dict:
        return {"successes": successes, "episodes": 50, "ci95": list(ci)}

    deployed = ev(20, (0.27, 0.54))
    assert should_promote(ev(21, (0.29, 0.56)), deployed, "point")[0]
    assert not should_promote(ev(20, (0.27, 0.54)), deployed, "point")[0]  # a tie keeps the deployed one
    assert not should_promote(ev(19, (0.25, 0.52)), deployed, "point")[0]
    assert not should_promote(ev(30, (0.46, 0.72)), deployed, "interval")[0]  # the intervals overlap
    assert should_promote(ev(40, (0.67, 0.89)), deployed, "interval")[0]


# --- init_from ----------------------------------------------------------------------------------------


def test_init_from_starts_from_the_runs_weights_and_keeps_its_statistics(tmp_path):
    from safetensors.numpy import load_file

    first, second = tmp_path / "data1", tmp_path / "data2"
    make_isaac_dataset(first, n_episodes=4, steps=6)
    make_isaac_dataset(second, n_episodes=4, steps=6)
    for folder in second.iterdir():  # other action values, so recomputed statistics would differ
        data = dict(np.load(folder / "episode_data.npz"))
        data["actions"] = data["actions"] * 3 + 1
        np.savez(folder / "episode_data.npz", **data)
    data = ["data=isaac", "model.proprio=false"]
    train(tmp_path / "a", [*data, f"data.root={first}"])
    train(tmp_path / "b", [*data, f"data.root={second}", f"init_from={tmp_path / 'a'}"])
    stats = [json.loads((tmp_path / r / "dataset_statistics.json").read_text()) for r in ("a", "b")]
    assert stats[0] == stats[1]
    trained = load_file(next((tmp_path / "a" / "model").glob("*.safetensors")))
    started = load_file(next((tmp_path / "b" / "base_model").glob("*.safetensors")))
    assert trained.keys() == started.keys()
    assert all(np.array_equal(trained[k], started[k]) for k in trained)


@pytest.mark.slow
def test_init_from_refuses_another_model_and_a_lora_run(tmp_path):
    data = ["data=isaac", "model.proprio=false", f"data.root={tmp_path / 'data'}"]
    make_isaac_dataset(tmp_path / "data", n_episodes=4, steps=6)
    train(tmp_path / "a", data)
    with pytest.raises(ConfigError, match="model.layout.chunk_size"):
        train(
            tmp_path / "c",
            [*data, f"init_from={tmp_path / 'a'}", "model.layout.chunk_size=2"],
        )
    train(tmp_path / "lora", [*data, "lora=efficient"])
    with pytest.raises(ConfigError, match="lora=full"):
        train(tmp_path / "d", [*data, f"init_from={tmp_path / 'lora'}", "lora=efficient"])


# --- the loop end to end ------------------------------------------------------------------------------


def test_dagger_loop_records_relabels_retrains_and_resumes(tmp_path, start_run, monkeypatch):
    """Two rounds through the server and client: episodes in the Isaac format whose actions are the
    expert's labels at the recorded states; each fine-tune starts from the deployed weights on the
    union; a crash in round 2's training leaves round 1 intact and the rerun finishes without
    recording again; a round that is not better stays on disk but is not deployed."""
    import train as entry
    from vla.data.isaac import load_isaac_episodes
    from vla.learn import rounds
    from vla.learn.relabel import expert_label
    from vla.sim.athena import HOME_POSE, AthenaRobot
    from vla.sim.env import AthenaEnv
    from vla.sim.tasks import sample_episode

    # Held-out results fixed per policy, so promotion is decided by the test: round 1 worse, round 2 better.
    scores = {str(start_run.resolve()): 1, "round_001": 0, "round_002": 2}

    def fake_eval(run_dir, cfg, sim):
        n = scores[str(run_dir)] if str(run_dir) in scores else scores[Path(run_dir).parent.name]
        return {"successes": n, "episodes": 2, "success_rate": n / 2, "ci95": [0.0, 1.0], "per_task": {}}

    monkeypatch.setattr(rounds, "evaluate_run", fake_eval)
    inits = []

    def crashing_train(cfg):
        inits.append(cfg.init_from)
        if len(inits) == 2:
            raise RuntimeError("killed")
        return entry.run(cfg)

    # Deployment conditions: every rollout starts from its scene's displaced pose.
    cfg = learn_config(tmp_path / "loop", start_run, ["sim.disturbance.start_std=0.5"])
    with pytest.raises(RuntimeError, match="killed"):
        rounds.run_loop(cfg, crashing_train)
    ds = VersionedDataset(tmp_path / "loop")
    assert [m["status"] for m in ds.manifests()] == ["evaluated", "evaluated", "recorded"]
    round2 = {p.name: p.stat().st_mtime_ns for p in ds.episodes_dir(2).iterdir()}

    calls = []
    result = rounds.run_loop(cfg, lambda c: calls.append(c.init_from) or entry.run(c))
    assert {
        p.name: p.stat().st_mtime_ns for p in ds.episodes_dir(2).iterdir()
    } == round2  # not recorded again
    assert len(calls) == 1
    # Round 1 (0 of 2) was worse than the start (1 of 2): kept, not deployed; round 2 fine-tuned from the start.
    assert inits[0] == str(start_run.resolve()) and calls[0] == str(start_run.resolve())
    assert [r["promoted"] for r in result["rounds"]] == [True, False, True]
    assert result["deployed"].endswith("round_002/train")
    assert [r["train_episodes"] for r in result["rounds"]] == [3, 5, 7]

    manifest = ds.manifest(1)
    assert manifest["relabel"] == "dagger" and manifest["beta"] == 0.5 and manifest["counts"]["episodes"] == 2
    episodes = load_isaac_episodes(ds.episodes_dir(1)).episodes
    with AthenaRobot(rounds.Loop(cfg, entry.run).sim) as robot:
        env = AthenaEnv(robot=robot)
        for episode in episodes:
            meta = json.loads((Path(episode.path) / "metadata.json").read_text())
            assert (
                isinstance(meta["success"], bool)
                and meta["judge"] == "sim"
                and "safety_interventions" in meta
            )
            spec = sample_episode(robot, meta["task"], meta["seed"])
            q = np.asarray(episode.states)[:, :23]
            env.reset(meta["task"], meta["seed"], cfg.sim.disturbance)  # the rollout started disturbed
            np.testing.assert_allclose(q[0], env.disturbance.start, atol=1e-5)
            assert meta["disturbance"]["start"] == env.disturbance.record()["start"]
            assert np.abs(q[0] - HOME_POSE).max() > 0.2
            labels = [expert_label(spec, t, q[t], 5) for t in range(len(q))]
            np.testing.assert_allclose(episode.actions, labels, atol=1e-5)
            assert (Path(episode.path) / "rollout.npz").is_file()
    for name in ("history.csv", "history.md", "history.png", "csv/metrics.csv"):
        assert (tmp_path / "loop" / name).is_file()
    assert len((tmp_path / "loop" / "csv" / "metrics.csv").read_text().splitlines()) == 4  # header + 3 rounds
    with pytest.raises(ConfigError, match="learn.episodes_per_task"):
        rounds.run_loop(learn_config(tmp_path / "loop", start_run, ["learn.episodes_per_task=3"]), entry.run)
    with pytest.raises(ConfigError, match="sim.disturbance"):  # resumed under other conditions
        rounds.run_loop(learn_config(tmp_path / "loop", start_run), entry.run)


def test_held_out_evaluation_runs_under_the_loops_disturbance(tmp_path, monkeypatch):
    from vla.config import SimSettings
    from vla.learn import rounds

    seen = []
    monkeypatch.setattr("vla.inference.load_policy", lambda run_dir: "policy")
    monkeypatch.setattr(
        "vla.sim.evaluate.evaluate_policy",
        lambda policy, settings: (
            seen.append(settings)
            or {
                "episodes": 2,
                "success_rate": 0.5,
                "ci95": (0.1, 0.9),
                "per_task": {"raise_arm": {"successes": 1}},
            }
        ),
    )
    cfg = learn_config(tmp_path, tmp_path, ["sim.disturbance.start_std=0.4", "sim.disturbance.joints=all"])
    assert rounds.evaluate_run(tmp_path, cfg, SimSettings())["successes"] == 1
    assert seen[0].disturbance == cfg.sim.disturbance and seen[0].disturbance.start_std == 0.4


@pytest.mark.slow
def test_baseline_and_success_only_arms(tmp_path, start_run, monkeypatch):
    import train as entry
    from vla.data.isaac import load_isaac_episodes
    from vla.learn import rounds
    from vla.sim.athena import HOME_POSE

    monkeypatch.setattr(
        rounds,
        "evaluate_run",
        lambda *a: {"successes": 1, "episodes": 2, "success_rate": 0.5, "ci95": [0, 1], "per_task": {}},
    )
    cfg = learn_config(
        tmp_path / "bc",
        start_run,
        ["learn.rounds=1", "learn.relabel=expert_demos", "sim.disturbance.start_std=0.5"],
    )
    result = rounds.run_loop(cfg, entry.run)
    episodes = load_isaac_episodes(VersionedDataset(tmp_path / "bc").episodes_dir(1)).episodes
    assert len(episodes) == 2 and all(e.success for e in episodes)
    # Demonstrations are recorded as the start data was: from home, whatever the deployment meets.
    assert all(np.allclose(np.asarray(e.states)[0, :23], HOME_POSE, atol=1e-6) for e in episodes)
    assert result["rounds"][1]["new_episodes"] == 2

    # success_only with a person who says no to everything: nothing new is trained on.
    cfg = learn_config(
        tmp_path / "so", start_run, ["learn.rounds=1", "learn.relabel=success_only", "learn.judge=human"]
    )
    seen = []
    trained_on = []

    def train_fn(c):
        trained_on.append(c.data.success_only)
        return entry.run(c)

    result = rounds.run_loop(
        cfg, train_fn, judge=lambda task, seed, instruction, sim_says: seen.append(seed) or False
    )
    meta = [
        json.loads(p.read_text())
        for p in (tmp_path / "so" / "dataset" / "round_001").glob("episodes/*/metadata.json")
    ]
    assert len(seen) == 2 and [m["success"] for m in meta] == [False, False]
    assert all(m["judge"] == "human" for m in meta) and trained_on == [True]
    assert result["rounds"][1]["train_episodes"] == 3  # the start run's three demos only


def test_terminal_judge_asks_until_it_gets_yes_or_no(monkeypatch):
    from vla.learn.rollout import terminal_judge

    answers = iter(["maybe", "", "Y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert terminal_judge("raise_arm", 1, "raise your arm", False) is True

    def closed(prompt):
        raise EOFError

    monkeypatch.setattr("builtins.input", closed)
    with pytest.raises(LoopError, match="learn.judge=human"):
        terminal_judge("raise_arm", 1, "raise your arm", False)


def test_cli_names_a_bad_start_and_exits_2(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    cmd = [sys.executable, "scripts/learn_online.py", f"start={tmp_path}", f"output_dir={tmp_path / 'loop'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"start={tmp_path}" in proc.stderr and "lora=full" in proc.stderr


def history_row(r: int, successes: int, promoted: bool, new_episodes: int) -> dict:
    """One round's history row (as `vla.learn.history` gets it) with half the new episodes successful."""
    return {
        "round": r,
        "relabel": "dagger",
        "beta": 0.5 if r else 0.0,
        "new_episodes": new_episodes,
        "new_successes": new_episodes // 2,
        "train_episodes": 8 + 10 * r,
        "success_rate": successes / 50,
        "ci95_low": 0.1,
        "ci95_high": 0.9,
        "successes": successes,
        "eval_episodes": 50,
        "promoted": promoted,
        "policy": f"run{r}",
    }


def test_history_is_logged_per_round_to_tensorboard_and_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vla.config import LoggerConfig
    from vla.learn.history import log_round

    rows = []
    for r, (successes, promoted) in enumerate([(20, True), (18, False), (31, True)]):
        rows.append(history_row(r, successes, promoted, new_episodes=10 * bool(r)))
        for name in ("tensorboard", "csv"):
            log_round(LoggerConfig(name=name), tmp_path, rows)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, round(e.value, 2)) for e in events.Scalars("learn/success_rate")] == [
        (0, 0.4),
        (1, 0.36),
        (2, 0.62),
    ]
    assert [e.value for e in events.Scalars("learn/promoted")] == [1.0, 0.0, 1.0]
    assert events.Images("learn/history")  # the plot
    csv_rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[2].startswith("1,0.36")
    table = (tmp_path / "history.md").read_text()
    assert "| 1 | dagger | 0.5 | 10 (5) | 18 | 36% [10-90] (18/50) | no |" in table
    assert (tmp_path / "history.png").stat().st_size > 1000


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file (`run-<id>.wandb`: a LevelDB-style log of protobuf
    records in 32 KiB blocks, each chunk with a 7-byte header: crc32, length, type 1 full / 2 first /
    3 middle / 4 last), as {key: decoded value}."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, rows, pos, pending = run_file.read_bytes(), [], 7, b""  # after the ":W&B" file header
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == kind == 0:
            break
        pending, pos = pending + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def test_history_is_logged_per_round_to_wandb_offline(tmp_path, monkeypatch):
    import time

    from vla.config import LoggerConfig
    from vla.learn.history import log_round

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = []
    for r, (successes, promoted) in enumerate([(20, True), (18, False)]):
        rows.append(history_row(r, successes, promoted, new_episodes=10 * r))
        log_round(LoggerConfig(name="wandb"), tmp_path, rows)
        time.sleep(1.1 * (r == 0))  # offline run folders are named by the second they start in
    # One offline run folder per round (each round is its own process in a real loop), one W&B run id.
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-learn-{tmp_path.name}"))
    assert len(runs) == 2, runs
    logged = []
    for _ in range(40):  # wandb-core may still be writing the last run's file on a loaded machine
        logged = [row for run in runs for row in _wandb_history(next(run.glob("run-*.wandb")))]
        if len(logged) >= 2:
            break
        time.sleep(0.5)
    assert [(row["_step"], row["learn/success_rate"], row["learn/promoted"]) for row in logged] == [
        (0, 0.4, 1.0),
        (1, 0.36, 0.0),
    ]
    table = json.loads(next((runs[1] / "files" / "media" / "table").rglob("*.table.json")).read_text())
    assert [row[0] for row in table["data"]] == [0, 1] and table["columns"][6] == "success_rate"
    assert logged[1]["learn/history_plot/_type"] == "image-file"
    assert next((runs[1] / "files" / "media" / "images").rglob("*.png")).stat().st_size > 1000
