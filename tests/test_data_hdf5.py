"""Isaac Lab recorder / robomimic HDF5 demos: layout, keys, instructions, success, bad files, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from data_factories import truncate_file
from test_data_lerobot import MEAN_TOLERANCE, all_frames, smooth_frames

from vla.config import DataConfig
from vla.data.datamodule import load_episodes
from vla.data.episodes import DataError
from vla.data.hdf5 import H5Frames, load_hdf5_demos
from vla.data.lerobot import load_lerobot_dataset
from vla.data.lerobot_writer import write_lerobot_dataset


def demo_arrays(i: int, steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "actions": rng.normal(size=(steps, 7)).astype(np.float32),
        "joint_pos": rng.normal(size=(steps, 3)).astype(np.float32),
        "joint_vel": rng.normal(size=(steps, 2)),  # float64, as Isaac Lab records some terms
        "table_cam": smooth_frames(i, steps),
        "wrist_cam": 255 - smooth_frames(i + 5, steps),
    }


def write_isaac_lab_hdf5(path: Path, demos: dict[str, dict], env_name: str = "Isaac-Stack-Cube-Franka-v0"):
    """An HDF5 file in the layout Isaac Lab's HDF5DatasetFileHandler writes (robomimic's family): a
    `data` group (attrs total, env_args JSON), `data/<demo>` (attrs num_samples, success, seed) with
    `actions`, `obs/<term>`, `states/...` and `initial_state/...`, gzip-compressed."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = 0
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 2})
        for name, arrays in demos.items():
            demo = data.create_group(name)
            steps = len(arrays["actions"])
            demo.attrs["num_samples"] = steps
            demo.attrs["success"] = np.bool_(arrays.get("success", True))
            demo.attrs["seed"] = 7
            demo.create_dataset("actions", data=arrays["actions"], compression="gzip")
            for key in ("joint_pos", "joint_vel", "table_cam", "wrist_cam"):
                demo.create_dataset(f"obs/{key}", data=arrays[key], compression="gzip")
            demo.create_dataset("states/articulation/robot/joint_position", data=arrays["joint_pos"])
            demo.create_dataset(
                "initial_state/articulation/robot/joint_position", data=arrays["joint_pos"][:1]
            )
            data.attrs["total"] += steps


@pytest.fixture
def demos() -> dict[str, dict]:
    out = {f"demo_{i}": demo_arrays(i, steps=4 + i) for i in (0, 1, 10)}
    out["demo_1"]["success"] = False
    return out


@pytest.fixture
def file(tmp_path, demos) -> Path:
    write_isaac_lab_hdf5(tmp_path / "dataset.hdf5", demos)
    return tmp_path / "dataset.hdf5"


def test_reads_the_isaac_lab_layout(file, demos):
    result = load_hdf5_demos(
        file, camera="table_cam", state_keys=["joint_pos", "joint_vel"], instruction="stack"
    )
    # Natural order: demo_10 after demo_1.
    assert [e.episode_id for e in result.episodes] == [
        "dataset.hdf5#demo_0",
        "dataset.hdf5#demo_1",
        "dataset.hdf5#demo_10",
    ]
    for episode, arrays in zip(result.episodes, demos.values(), strict=True):
        np.testing.assert_array_equal(episode.actions, arrays["actions"])
        expected = np.concatenate([arrays["joint_pos"], arrays["joint_vel"].astype(np.float32)], axis=1)
        np.testing.assert_array_equal(episode.states, expected)
        np.testing.assert_array_equal(episode.frames, arrays["table_cam"])
        assert episode.instruction == "stack" and episode.source == "hdf5" and episode.camera == "table_cam"
        assert isinstance(episode.cameras["wrist_cam"], H5Frames)
        np.testing.assert_array_equal(episode.camera_frames("wrist_cam"), arrays["wrist_cam"])
    assert [e.success for e in result.episodes] == [True, False, True]


def test_defaults_first_camera_every_vector_and_the_env_name(file, demos):
    episode = load_hdf5_demos(file).episodes[0]
    assert episode.camera == "table_cam" and episode.metadata["state_keys"] == ["joint_pos", "joint_vel"]
    assert episode.state_dim == 5 and episode.instruction == "Isaac-Stack-Cube-Franka-v0"
    wrist = load_hdf5_demos(file, camera="wrist_cam", state_keys=[]).episodes[0]
    np.testing.assert_array_equal(wrist.frames, demos["demo_0"]["wrist_cam"])
    assert wrist.state_dim == 0


def test_recorded_language_wins_over_the_env_name(file):
    with h5py.File(file, "a") as f:
        f["data/demo_1"].attrs["language_instruction"] = "put the red cube on the blue one"
        f["data"].attrs["problem_info"] = json.dumps({"language_instruction": "stack the cubes"})
    instructions = [e.instruction for e in load_hdf5_demos(file).episodes]
    assert instructions == ["stack the cubes", "put the red cube on the blue one", "stack the cubes"]


def test_load_episodes_dispatches_data_hdf5(file):
    config = DataConfig(
        name="hdf5", format="hdf5", root=str(file.parent), camera="wrist_cam", instruction="stack"
    )
    result = load_episodes(config, file.parent / "cache")
    assert len(result.episodes) == 3 and result.episodes[0].camera == "wrist_cam"


def test_hdf5_to_lerobot_round_trip(file, tmp_path):
    """HDF5 demos -> LeRobot v3 -> the same actions, states and instruction; frames within the codec's
    tolerance; success is not a LeRobot field."""
    demos = load_hdf5_demos(file, instruction="stack").episodes
    write_lerobot_dataset(demos, tmp_path / "lr", fps=10)
    back = load_lerobot_dataset(tmp_path / "lr", camera="observation.images.table_cam").episodes
    for a, b in zip(demos, back, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
        assert a.instruction == b.instruction
        assert np.abs(all_frames(b) - a.frames).mean() < MEAN_TOLERANCE
        assert set(b.cameras) == {"observation.images.wrist_cam"}


# -- bad files -------------------------------------------------------------------------------------


def break_demo(file: Path, edit) -> None:
    with h5py.File(file, "a") as f:
        edit(f["data/demo_1"])


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda demo: demo.__delitem__("actions"),
            r"missing dataset 'actions' \(the demo has \['initial_state', 'obs'",
        ),
        (
            lambda demo: demo.attrs.__setitem__("num_samples", 99),
            r"num_samples is 99 but 'actions' has 5 steps",
        ),
        (lambda demo: demo.__delitem__("obs/joint_vel"), r"state_keys \['joint_vel'\] not among"),
        (
            lambda demo: (
                demo.__delitem__("obs/joint_pos"),
                demo.create_dataset("obs/joint_pos", data=np.zeros((3, 3))),
            ),
            r"obs 'joint_pos' has 3 steps, 'actions' has 5",
        ),
        (
            lambda demo: (
                demo.__delitem__("actions"),
                demo.create_dataset("actions", data=np.full((5, 7), np.nan)),
            ),
            r"'actions' has 35 non-finite values",
        ),
    ],
    ids=["no-actions", "num-samples", "missing-obs", "obs-length", "nan"],
)
def test_a_bad_demo_names_file_and_demo_and_skip_keeps_the_rest(file, edit, message):
    break_demo(file, edit)
    with pytest.raises(DataError, match=rf"demo 'dataset.hdf5#demo_1' \(.*dataset.hdf5\).*{message}"):
        load_hdf5_demos(file, state_keys=["joint_pos", "joint_vel"])
    result = load_hdf5_demos(file, state_keys=["joint_pos", "joint_vel"], on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["dataset.hdf5#demo_0", "dataset.hdf5#demo_10"]
    assert [s.episode_id for s in result.skipped] == ["dataset.hdf5#demo_1"]


def test_unknown_keys_list_the_available_ones(file):
    with pytest.raises(DataError, match=r"data.camera='front'.*\['table_cam', 'wrist_cam'\]"):
        load_hdf5_demos(file, camera="front")
    with pytest.raises(
        DataError, match=r"data.state_keys \['eef_pos'\] not among .*\['joint_pos', 'joint_vel'\]"
    ):
        load_hdf5_demos(file, state_keys=["eef_pos"])
    with pytest.raises(DataError, match=r"missing dataset 'processed_actions'"):
        load_hdf5_demos(file, action_key="processed_actions")


def test_truncated_or_foreign_files(tmp_path, demos):
    write_isaac_lab_hdf5(tmp_path / "a.hdf5", {"demo_0": demos["demo_0"]})
    write_isaac_lab_hdf5(tmp_path / "b.hdf5", {"demo_0": demos["demo_1"]})
    truncate_file(tmp_path / "b.hdf5")
    with pytest.raises(DataError, match=r"b.hdf5: cannot open as HDF5"):
        load_hdf5_demos(tmp_path)
    result = load_hdf5_demos(tmp_path, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["a.hdf5#demo_0"]
    assert [s.episode_id for s in result.skipped] == ["b.hdf5"]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"c.h5: no 'data' group \(keys: \['images'\]\)"):
        load_hdf5_demos(tmp_path / "c.h5")
    with pytest.raises(DataError, match=r"no such file or folder"):
        load_hdf5_demos(tmp_path / "missing.hdf5")


@pytest.mark.slow
def test_simulator_episodes_through_hdf5_give_the_same_training_samples(tmp_path):
    """The issue's round trip for HDF5: simulator episodes written in Isaac Lab's recorder layout (one
    demo per episode, the camera and the robot state as obs terms, the instruction as the demo's
    `language_instruction`) give the training samples of the episode folders exactly, pixels
    included (HDF5 stores the frames losslessly)."""
    from conftest import compose_config

    from vla.config import QuantizationConfig, TrainConfig
    from vla.config.sim import SampleDataSettings, SimSettings
    from vla.data.datamodule import VLADataModule
    from vla.data.isaac import load_isaac_episodes
    from vla.sim.episodes import generate_dataset
    from vla.training.build import build_base_model

    generate_dataset(
        SampleDataSettings(episodes_per_task=2, sim=SimSettings(image_size=64)),
        tmp_path / "sim",
        progress=False,
    )
    episodes = load_isaac_episodes(tmp_path / "sim").episodes
    with h5py.File(tmp_path / "sim.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "athena", "type": 2})
        for episode in episodes:
            demo = data.create_group(episode.episode_id)
            demo.attrs["num_samples"] = episode.num_steps
            demo.attrs["success"] = np.bool_(True)
            demo.attrs["language_instruction"] = episode.instruction
            demo.create_dataset("actions", data=episode.actions, compression="gzip")
            demo.create_dataset("obs/robot_state", data=episode.states, compression="gzip")
            frames = np.stack([episode.frame(t) for t in range(episode.num_steps)])
            demo.create_dataset("obs/rgb", data=frames, compression="gzip")
    common = ["run_dir=/tmp/never-written"]
    sources = {
        "folders": ["data=isaac", f"data.root={tmp_path / 'sim'}"],
        "hdf5": [
            "data=hdf5",
            f"data.root={tmp_path / 'sim.hdf5'}",
            "data.camera=rgb",
            "data.state_keys=[robot_state]",
            "data.dataset_key=athena_isaac",
        ],
    }
    sets, stats = {}, {}
    for name, overrides in sources.items():
        cfg = compose_config(
            "train", [*overrides, *common, f"paths.cache_dir={tmp_path / name}"], TrainConfig
        )
        module = VLADataModule.for_run(cfg.data, cfg)
        stats[name] = module.prepare()
        module.attach(build_base_model(cfg.model, QuantizationConfig(), stats[name], cfg.augment.crop_scale))
        module.setup("fit")
        sets[name] = (module.train_set, module.val_set)
    assert stats["folders"] == stats["hdf5"]
    assert sum(len(s) for s in sets["folders"]) == sum(e.num_steps for e in episodes)
    for a, b in zip(sets["folders"], sets["hdf5"], strict=True):
        assert len(a) == len(b)
        for i in range(len(a)):
            x, y = a[(0, i)], b[(0, i)]
            for key in (
                "input_ids",
                "labels",
                "actions",
                "action_steps",
                "states",
                "images",
                "episode",
                "step",
            ):
                np.testing.assert_array_equal(
                    np.asarray(x[key]), np.asarray(y[key]), err_msg=f"sample {i} {key}"
                )
