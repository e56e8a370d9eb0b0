"""DemonstrationRecorder: files the project's loaders read back exactly, that train, and clear errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import vla.data.recorder as recorder_module
from vla.config import FilterConfig
from vla.data.isaac import load_isaac_episodes
from vla.data.pickle_demos import load_pickle_demos
from vla.data.quality import filter_episodes
from vla.data.recorder import DemonstrationRecorder, RecordingError, RobotSource

JOINTS = 22


class FakeRobot:
    """A robot whose joint i sits at 0.1 * i + 0.01 * tick; a 4x4 image encodes the tick."""

    def __init__(self, gripper_dims: int | None = None) -> None:
        self.tick = 0
        self.gripper_dims = gripper_dims  # None: a scalar gripper

    def step(self) -> None:
        self.tick += 1

    def get_rgb(self) -> np.ndarray:
        return np.full((4, 4, 3), self.tick, dtype=np.uint8)

    def get_joint_positions(self) -> np.ndarray:
        return 0.1 * np.arange(JOINTS) + 0.01 * self.tick

    def get_joint_velocities(self) -> np.ndarray:
        return np.full(JOINTS, 0.25) * (self.tick % 3)

    def get_gripper_state(self):
        if self.gripper_dims is None:
            return float(self.tick % 2)
        return np.zeros(self.gripper_dims)


def record_demos(n_demos: int = 3, frames: int = 8, **robot_kwargs) -> DemonstrationRecorder:
    recorder = DemonstrationRecorder(fps=10.0)
    for d in range(n_demos):
        robot = FakeRobot(**robot_kwargs)
        recorder.start(f"wave hand {d}")
        for _ in range(frames):
            recorder.record(robot)
            robot.step()
        recorder.stop(success=d != 1)
    return recorder


def test_fake_robot_satisfies_the_protocol():
    assert isinstance(FakeRobot(), RobotSource)


@pytest.mark.parametrize("format", ["pickle", "isaac"])
def test_saved_demos_load_with_the_project_loaders(tmp_path, format):
    recorder = record_demos()
    path = recorder.save(tmp_path / ("demos.pkl" if format == "pickle" else "episodes"), format=format)
    loaded = (load_pickle_demos if format == "pickle" else load_isaac_episodes)(path).episodes

    assert [e.instruction for e in loaded] == ["wave hand 0", "wave hand 1", "wave hand 2"]
    assert [e.success for e in loaded] == [True, False, True]
    for ep in loaded:
        assert ep.num_steps == 7  # 8 frames: observation i -> the target reached at frame i+1
        for t in (0, 6):
            # Independent of the recorder: the robot's state at tick t and its joints at tick t+1.
            expected_state = np.concatenate(
                [0.1 * np.arange(JOINTS) + 0.01 * t, np.full(JOINTS, 0.25 * (t % 3))]
            )
            expected_action = np.append(0.1 * np.arange(JOINTS) + 0.01 * (t + 1), (t + 1) % 2)
            np.testing.assert_allclose(ep.states[t], expected_state, rtol=1e-6)
            np.testing.assert_allclose(ep.actions[t], expected_action, rtol=1e-6)
            assert (ep.frame(t) == t).all()
    if format == "isaac":
        assert loaded[0].fps == 10.0 and loaded[0].timestamps.shape == (7,)


def test_gripperless_robot_keeps_the_joint_count(tmp_path):
    recorder = record_demos(n_demos=1, gripper_dims=0)
    [ep] = load_pickle_demos(recorder.save(tmp_path / "d.pkl")).episodes
    assert ep.action_dim == JOINTS and ep.state_dim == 2 * JOINTS


def test_order_errors():
    recorder, robot = DemonstrationRecorder(), FakeRobot()
    with pytest.raises(RecordingError, match="record\\(\\) called before start"):
        recorder.record(robot)
    with pytest.raises(RecordingError, match="stop\\(\\) called without start"):
        recorder.stop()
    with pytest.raises(RecordingError, match="nothing to save"):
        recorder.save("unused.pkl")
    recorder.start("wave")
    with pytest.raises(RecordingError, match="start\\(\\) called while recording"):
        recorder.start("again")
    recorder.record(robot)
    with pytest.raises(RecordingError, match="save\\(\\) called while recording"):
        recorder.save("unused.pkl")
    with pytest.raises(RecordingError, match="empty episode.*1 frame"):
        recorder.stop()
    assert not recorder.recording and recorder.demos == []


def test_frame_errors_name_the_frame():
    recorder, robot = DemonstrationRecorder(), FakeRobot()
    recorder.start("wave")
    recorder.record(robot)

    class Wider(FakeRobot):
        def get_joint_positions(self):
            return np.zeros(JOINTS + 1)

        def get_joint_velocities(self):
            return np.zeros(JOINTS + 1)

    with pytest.raises(RecordingError, match=r"frame 1: joint positions shape \(23,\) differs"):
        recorder.record(Wider())

    class FloatImage(FakeRobot):
        def get_rgb(self):
            return np.zeros((4, 4, 3), dtype=np.float32)

    with pytest.raises(RecordingError, match="frame 1: get_rgb\\(\\) must give uint8"):
        recorder.record(FloatImage())
    with pytest.raises(ValueError, match="non-empty"):
        DemonstrationRecorder().start("  ")


def test_save_does_not_replace_without_overwrite_and_bad_format(tmp_path):
    recorder = record_demos(n_demos=1)
    path = recorder.save(tmp_path / "d.pkl")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        recorder.save(path)
    with pytest.raises(ValueError, match="format='hdf5'"):
        recorder.save(tmp_path / "x", format="hdf5")
    record_demos(n_demos=2).save(path, overwrite=True)
    assert len(load_pickle_demos(path).episodes) == 2


def test_interrupted_isaac_save_leaves_the_old_folder_and_no_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "episodes"
    record_demos(n_demos=1).save(target, format="isaac")
    real_writer, calls = recorder_module.write_isaac_episode, []

    def failing_writer(episode, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError("disk full")
        real_writer(episode, folder)

    monkeypatch.setattr(recorder_module, "write_isaac_episode", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        record_demos(n_demos=3).save(target, format="isaac", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes"]  # no temporary left behind
    assert len(load_isaac_episodes(target).episodes) == 1  # the old dataset, intact


def test_in_memory_episodes_with_nan_are_dropped_by_the_filter():
    class Glitchy(FakeRobot):
        def get_joint_velocities(self):
            values = super().get_joint_velocities()
            values[3] = np.nan if self.tick == 2 else values[3]
            return values

    recorder = DemonstrationRecorder()
    for robot in (FakeRobot(), Glitchy()):
        recorder.start("wave")
        for _ in range(8):
            recorder.record(robot)
            robot.step()
        recorder.stop(success=True)
    kept, dropped = filter_episodes(recorder.to_episodes(), FilterConfig(min_state_variance=0))[:2]
    assert [e.episode_id for e in kept] == ["recorded#0"]
    assert dropped[0].episode_id == "recorded#1" and dropped[0].rule == "non_finite"
    assert "states" in dropped[0].reason and "step 2, dim 25" in dropped[0].reason  # 22 positions + 3


@pytest.mark.parametrize("format", ["pickle", pytest.param("isaac", marks=pytest.mark.slow)])
def test_recorded_demos_train(tmp_path, format):
    from test_train import train

    path = record_demos(n_demos=3, frames=8).save(tmp_path / "demos", format=format)
    metrics = train(tmp_path / "run", [f"data={format}", f"data.root={path}", "logger=csv"])
    assert np.isfinite(metrics["val/loss"])
    assert (tmp_path / "run" / "dataset_statistics.json").is_file()
    # The quality filter's counts reach the logger at step 0: 3 demos, all kept.
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    data_row = next(row for row in rows if row.get("data/kept"))
    assert float(data_row["data/kept"]) == 3 and float(data_row["data/dropped/too_short"]) == 0


def test_recorded_pickle_trains_with_chunks_and_augmentation(tmp_path):
    """Recorder -> pickle -> train.py with model.layout.chunk_size=2 and augment=seed -> a run that
    predicts 2-step chunks of the recorded robot's 23 action dimensions (22 joints + gripper)."""
    from test_train import train

    from vla.training.runs import load_run

    path = record_demos(n_demos=3, frames=8).save(tmp_path / "demos.pkl", format="pickle")
    # 2 training steps (FAST)
    overrides = ["data=pickle", f"data.root={path}", "model.layout.chunk_size=2", "augment=seed"]
    metrics = train(tmp_path / "run", overrides)
    assert np.isfinite(metrics["val/loss"]) and np.isfinite(metrics["train/loss"])
    model = load_run(tmp_path / "run")
    assert model.action_chunk_size == 2
    pred = model.predict([np.zeros((4, 4, 3), np.uint8)], ["wave hand 0"])
    assert pred.actions.shape == (1, 2, JOINTS + 1)
