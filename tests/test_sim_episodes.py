"""Sample data: the Isaac episode format, the pickle format, the settings-keyed cache, held-out seeds,
and the Hydra entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf.errors import ConfigKeyError
from PIL import Image

import vla.sim.episodes as episodes
from tests.conftest import compose_config, load_script
from vla.config import (
    EVALUATION_SEED_BASE,
    TASK_NAMES,
    EvalSettings,
    MakeSampleDataConfig,
    SampleDataSettings,
    SimSettings,
)
from vla.sim.athena import JOINT_NAMES, STATE_NAMES

SMALL = SampleDataSettings(episodes_per_task=1, sim=SimSettings(image_size=64))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("athena") / "data"
    settings = SampleDataSettings(episodes_per_task=2, sim=SimSettings(image_size=64), write_pickle=True)
    summary = episodes.generate_dataset(settings, root, progress=False)
    assert summary["episodes"] == 8 and all(rate == 1.0 for rate in summary["success_rate"].values())
    return root


def test_isaac_folder_format(dataset):
    folders = sorted(p for p in dataset.iterdir() if p.is_dir())
    assert [p.name for p in folders][:2] == ["lift_knee_000000", "lift_knee_000001"]
    assert {p.name.rsplit("_", 1)[0] for p in folders} == set(TASK_NAMES)
    for folder in folders:
        meta = json.loads((folder / "metadata.json").read_text())
        for key in ("task_description", "instructions", "success", "fps", "joint_names", "seed"):
            assert key in meta, key
        assert meta["success"] is True and meta["fps"] == 25 and meta["joint_names"] == list(JOINT_NAMES)
        assert meta["state_names"] == list(STATE_NAMES) and meta["task_description"] in meta["instructions"]
        with np.load(folder / "episode_data.npz") as npz:
            actions, states, stamps = npz["actions"], npz["states"], npz["timestamps"]
        steps = meta["num_steps"]
        assert actions.shape == (steps, 23) and states.shape == (steps, 47) and stamps.shape == (steps,)
        np.testing.assert_allclose(np.diff(stamps), 1 / 25)
        frames = sorted((folder / "images").iterdir())
        assert [f.name for f in frames[:2]] == ["frame_000000.png", "frame_000001.png"] and len(
            frames
        ) == steps
        assert np.asarray(Image.open(frames[0])).shape == (64, 64, 3)
        # Each state is observed before its action: the next state's joints move toward that action.
        gap_before = np.abs(actions[10] - states[10, :23]).max()
        assert np.abs(actions[10] - states[11, :23]).max() < gap_before or gap_before < 1e-3


def test_the_training_loaders_read_it(dataset):
    from vla.data.isaac import load_isaac_episodes
    from vla.data.pickle_demos import load_pickle_demos

    isaac = load_isaac_episodes(dataset, expected_action_dim=23, expected_state_dim=47)
    assert len(isaac.episodes) == 8 and not isaac.skipped
    assert all(episode.success for episode in isaac.episodes)
    first = isaac.episodes[0]
    assert (
        first.instruction
        == json.loads((dataset / first.episode_id / "metadata.json").read_text())["instructions"][0]
    )
    demos = load_pickle_demos(dataset / "demos.pkl").episodes
    assert len(demos) == 8
    for demo, episode in zip(demos, isaac.episodes):
        np.testing.assert_array_equal(demo.actions, episode.actions)
        np.testing.assert_array_equal(demo.states, episode.states)
        np.testing.assert_array_equal(demo.frames[3], episode.frame(3))


def test_generated_and_evaluated_seeds_are_disjoint():
    generated = episodes.generation_seeds(SampleDataSettings(episodes_per_task=500, seed=123))
    evaluated = EvalSettings(episodes_per_task=500)
    assert not set(generated) & set(range(evaluated.seed, evaluated.seed + 500))
    with pytest.raises(ValueError, match="held out"):
        SampleDataSettings(seed=EVALUATION_SEED_BASE - 5, episodes_per_task=10)
    with pytest.raises(ValueError, match="evaluation seeds"):
        EvalSettings(seed=0)


def test_task_episodes_sets_a_count_per_task(tmp_path):
    """`task_episodes` gives the named tasks their own episode count (the others keep episodes_per_task),
    keys another cache entry, and is checked against the tasks and the held-out seeds."""
    settings = SampleDataSettings(
        tasks=["raise_arm", "lift_knee"], episodes_per_task=1, task_episodes={"raise_arm": 3},
        sim=SMALL.sim,
    )  # fmt: skip
    assert list(episodes.generation_seeds(settings, "raise_arm")) == [0, 1, 2]
    assert list(episodes.generation_seeds(settings, "lift_knee")) == [0]
    episodes.generate_dataset(settings, tmp_path, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["lift_knee_000000", "raise_arm_000000", "raise_arm_000001", "raise_arm_000002"]
    plain = SampleDataSettings(tasks=["raise_arm", "lift_knee"], episodes_per_task=1, sim=SMALL.sim)
    assert episodes.sample_dataset_key(settings) != episodes.sample_dataset_key(plain)
    with pytest.raises(ValueError, match=r"task_episodes names \['reach_balls'\]"):
        SampleDataSettings(tasks=["raise_arm"], task_episodes={"reach_balls": 5})
    unused = SampleDataSettings(tasks=["raise_arm"], episodes_per_task=2, task_episodes={"reach_ball": 5})
    assert list(episodes.generation_seeds(unused, "raise_arm")) == [0, 1]
    with pytest.raises(ValueError, match="held out"):
        SampleDataSettings(tasks=["raise_arm"], task_episodes={"raise_arm": EVALUATION_SEED_BASE + 1})


def test_cache_is_reused_and_keyed_by_settings(tmp_path, monkeypatch):
    first = episodes.ensure_sample_dataset(SMALL, cache_dir=tmp_path, progress=False)
    assert len([p for p in first.iterdir() if p.is_dir()]) == 4

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(episodes, "generate_dataset", must_not_run)
    assert episodes.ensure_sample_dataset(SMALL, cache_dir=tmp_path) == first
    other = SampleDataSettings(episodes_per_task=1, seed=1, sim=SimSettings(image_size=64))
    assert episodes.sample_dataset_key(other) != episodes.sample_dataset_key(SMALL)
    # The DataModule's call style: `sim` passed on its own replaces settings.sim before hashing.
    same = episodes.ensure_sample_dataset(
        SampleDataSettings(episodes_per_task=1), SimSettings(image_size=64), cache_dir=tmp_path
    )
    assert same == first


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(settings, out_dir, **kwargs):
        (Path(out_dir) / "reach_ball_000000").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(episodes, "generate_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        episodes.ensure_sample_dataset(SMALL, cache_dir=tmp_path)
    assert list((tmp_path / "sample_data").iterdir()) == []


def test_refuses_to_mix_into_existing_episodes(dataset):
    settings = SampleDataSettings(episodes_per_task=1, tasks=["lift_knee"], sim=SimSettings(image_size=64))
    with pytest.raises(FileExistsError, match="lift_knee_000000"):
        episodes.generate_dataset(settings, dataset, progress=False)


def test_settings_validation():
    assert SampleDataSettings(tasks=["all"]).tasks == list(TASK_NAMES)
    with pytest.raises(ValueError, match="choose from"):
        SampleDataSettings(tasks=["juggle"])
    with pytest.raises(ValueError, match="control_hz"):
        SimSettings(control_hz=30)


def test_entry_point_runs_and_rejects_unknown_keys(tmp_path):
    script = load_script("make_sample_data")
    out = tmp_path / "out"
    overrides = [
        "data.sample.episodes_per_task=1", "data.sample.tasks=[turn_torso]", "data.sample.image_size=48",
        f"output_dir={out}", "data.sample.expert_noise=0.2",
    ]  # fmt: skip
    result = script.run(compose_config("make_sample_data", overrides, MakeSampleDataConfig))
    assert result["episodes"] == 1 and (out / "turn_torso_000000" / "metadata.json").is_file()
    assert json.loads((out / "turn_torso_000000" / "metadata.json").read_text())["expert_noise"] == 0.2
    assert np.asarray(Image.open(out / "turn_torso_000000" / "images" / "frame_000000.png")).shape == (
        48,
        48,
        3,
    )
    # The schema is in the config's defaults: an unknown key fails as it is composed.
    with pytest.raises(ConfigKeyError, match="episodes_per_tsk"):
        compose_config("make_sample_data", ["+data.sample.episodes_per_tsk=1"], MakeSampleDataConfig)
    with pytest.raises(ConfigKeyError, match="safty"):
        compose_config("make_sample_data", ["+sim.safty.enabled=false"], MakeSampleDataConfig)


def test_data_sample_control_hz_and_camera_reach_the_generated_episodes(tmp_path):
    """`data.sample.control_hz=5` (Bridge's rate) records episodes at 5 actions per second: the same
    scene and the same timed expert motion as at 25 Hz, in about a fifth of the steps;
    `data.sample.camera` records them from that camera (a separate cache entry)."""
    from vla.config import DataConfig, SampleDataConfig
    from vla.sim.episodes import resolve_sample_data

    def steps_and_fps(hz: int, camera: str = "front") -> tuple[int, int, np.ndarray]:
        sample = SampleDataConfig(
            tasks=["raise_arm"], episodes_per_task=1, image_size=64, control_hz=hz, camera=camera
        )
        data = resolve_sample_data(DataConfig(format="sample", sample=sample), None, tmp_path / "cache")
        root = Path(data.root)
        (episode,) = [p for p in root.iterdir() if p.is_dir()]
        metadata = json.loads((episode / "metadata.json").read_text())
        assert metadata["camera"] == camera
        n = len(np.load(episode / "episode_data.npz")["actions"])
        first = np.asarray(Image.open(episode / "images" / "frame_000000.png"))
        return n, metadata["fps"], first

    steps25, fps25, _ = steps_and_fps(25)
    steps5, fps5, front = steps_and_fps(5)
    assert (fps25, fps5) == (25, 5)
    *_, upper_body = steps_and_fps(5, "upper_body")
    assert np.abs(front.astype(int) - upper_body).mean() > 10  # another view of the same scene
    assert 3.5 < steps25 / steps5 < 6.5, (steps25, steps5)


def test_data_sample_expert_noise_reaches_the_generated_episodes(tmp_path):
    from vla.config import DataConfig, SampleDataConfig
    from vla.sim.episodes import resolve_sample_data

    roots = []
    for noise in (0.0, 0.3):
        sample = SampleDataConfig(tasks=["raise_arm"], episodes_per_task=1, image_size=48, expert_noise=noise)
        data = resolve_sample_data(DataConfig(format="sample", sample=sample), None, tmp_path / "cache")
        roots.append(Path(data.root))
    assert roots[0] != roots[1]  # separate cache entries
    (clean, noisy) = [next(p for p in root.iterdir() if p.is_dir()) for root in roots]
    assert json.loads((noisy / "metadata.json").read_text())["expert_noise"] == 0.3
    clean_states, noisy_states = (np.load(p / "episode_data.npz")["states"] for p in (clean, noisy))
    assert np.abs(clean_states - noisy_states).max() > 0.05


@pytest.fixture(scope="module")
def recorder():
    from vla.sim.athena import AthenaRobot
    from vla.sim.env import AthenaEnv
    from vla.sim.safety import SafetyFilter

    sim = SimSettings(image_size=64, control_hz=5)
    env = AthenaEnv(robot=AthenaRobot(sim))
    yield lambda task, seed, noise: episodes.record_episode(
        env, SafetyFilter(env.robot, sim.safety, sim.control_hz), task, seed, noise
    )
    env.close()


def test_noise_offsets_move_only_the_task_joints_and_spare_the_final_second():
    from vla.sim.athena import AthenaRobot
    from vla.sim.tasks import expert_noise_offsets, sample_episode, task_dims

    with AthenaRobot(SimSettings(image_size=64, control_hz=5)) as robot:
        spec = sample_episode(robot, "reach_ball", 4)
    offsets = expert_noise_offsets(spec, 5, 0.2)
    assert offsets.shape == (spec.num_steps, len(JOINT_NAMES)) == (15, 23)
    others = np.setdiff1d(np.arange(23), task_dims(spec))
    assert not offsets[:, others].any() and not offsets[-5:].any()  # the final second (5 steps) is clean
    noisy = offsets[:-5, task_dims(spec)]
    assert np.all(noisy != 0) and 0.05 < noisy.std() < 0.5
    # One draw per second: constant within [0, 5) and [5, 10), different between them.
    assert np.all(noisy[:5] == noisy[0]) and np.all(noisy[5:] == noisy[5]) and np.any(noisy[0] != noisy[5])
    np.testing.assert_array_equal(offsets, expert_noise_offsets(spec, 5, 0.2))  # seeded by the episode
    assert not expert_noise_offsets(spec, 5, 0.0).any()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_noisy_recording_keeps_the_expert_labels_and_still_succeeds(recorder, task):
    clean, noisy = recorder(task, 2, 0.0), recorder(task, 2, 0.25)
    # The recorded actions are the expert's own targets, whatever was executed ...
    np.testing.assert_allclose(noisy["actions"], clean["actions"], atol=1e-6)
    # ... while the robot was pushed off the expert's path (joint positions are the first 23 states) ...
    gap = np.abs(noisy["states"][:, :23] - clean["states"][:, :23]).max(axis=1)
    assert gap[1:6].max() > 0.05
    # ... and is back on it by the end: the episode keeps the scene and succeeds.
    assert noisy["metadata"]["success"] and noisy["metadata"]["expert_noise"] == 0.25
    assert noisy["metadata"]["balls"] == clean["metadata"]["balls"]
    assert np.all(noisy["images"][0] == clean["images"][0]) and not np.all(
        noisy["images"][3] == clean["images"][3]
    )


def test_noise_is_part_of_the_cache_key_and_checked():
    assert episodes.sample_dataset_key(SampleDataSettings(expert_noise=0.2)) != episodes.sample_dataset_key(
        SampleDataSettings()
    )
    with pytest.raises(ValueError, match="expert_noise"):
        SampleDataSettings(expert_noise=-0.1)
