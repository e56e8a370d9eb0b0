"""The athena robot: 23-DoF mapping onto the G1, state layout, fixed base, camera."""

from __future__ import annotations

import numpy as np
import pytest

from vla.config.sim import CAMERAS, SimSettings
from vla.sim.athena import (
    CAMERA_POSES,
    HOME_POSE,
    JOINT_NAMES,
    NUM_JOINTS,
    PELVIS_HEIGHT,
    STATE_DIM,
    WRIST_JOINTS,
    AthenaRobot,
    read_binary_stl,
)
from vla.sim.tasks import _BALL_X, _BALL_Y, _BALL_Z


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SimSettings(image_size=64)) as robot:
        yield robot


def test_layout_matches_the_seed():
    assert NUM_JOINTS == 23 and STATE_DIM == 47
    expected = {
        0: "left_hip_pitch", 3: "left_knee", 5: "left_ankle_roll", 6: "right_hip_pitch", 11: "right_ankle_roll",
        12: "left_shoulder_pitch", 15: "left_elbow", 16: "right_shoulder_pitch", 19: "right_elbow",
        20: "waist_yaw", 21: "waist_roll", 22: "waist_pitch",
    }  # fmt: skip
    assert {i: JOINT_NAMES[i] for i in expected} == expected
    assert len(set(JOINT_NAMES)) == 23


def test_each_dimension_drives_its_named_g1_joint_and_nothing_else(robot):
    data = robot.new_data()
    all_joints = [robot.model.joint(j).name for j in range(robot.model.njnt)]
    for dim, name in enumerate(JOINT_NAMES):
        robot.set_pose(data, HOME_POSE)
        before = data.qpos.copy()
        target = HOME_POSE.copy()
        lo, hi = robot.joint_limits[dim]
        room_up, room_down = hi - HOME_POSE[dim], HOME_POSE[dim] - lo
        target[dim] += min(0.3, 0.8 * room_up) if room_up > room_down else -min(0.3, 0.8 * room_down)
        for _ in range(10):
            robot.apply(data, target)
        moved = {all_joints[j]: data.qpos[j] - before[j] for j in range(len(all_joints))}
        assert moved[f"{name}_joint"] == pytest.approx(target[dim] - HOME_POSE[dim], abs=0.03), name
        others = {k: v for k, v in moved.items() if k != f"{name}_joint"}
        assert max(abs(v) for v in others.values()) < 0.02, (name, others)


def test_wrists_held_at_zero_and_base_fixed(robot):
    data = robot.new_data()
    target = HOME_POSE.copy()
    target[[12, 15, 16, 20]] = (-1.5, 0.5, -1.0, 0.8)
    for _ in range(25):
        robot.apply(data, target)
    wrists = [data.qpos[robot.model.joint(f"{w}_joint").qposadr[0]] for w in WRIST_JOINTS]
    assert np.abs(wrists).max() < 0.02
    assert robot.model.nq == 29  # no free joint: 29 hinges
    assert data.xpos[robot.model.body("pelvis").id] == pytest.approx([0.0, 0.0, PELVIS_HEIGHT])


def test_state_layout(robot):
    data = robot.new_data()
    target = HOME_POSE.copy()
    target[20] = 0.5
    robot.apply(data, target)
    state = robot.state(data)
    assert state.shape == (47,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:23], robot.joint_positions(data), atol=1e-6)
    assert state[23 + 20] > 0.1  # waist yaw velocity while turning
    assert state[46] == pytest.approx(PELVIS_HEIGHT)


def test_joint_limits_come_from_the_model(robot):
    knee = JOINT_NAMES.index("left_knee")
    assert robot.joint_limits[knee] == pytest.approx([-0.087267, 2.8798])
    assert np.all(robot.joint_limits[:, 0] < HOME_POSE) and np.all(robot.joint_limits[:, 1] > HOME_POSE)


def test_wrong_action_size_is_a_clear_error(robot):
    with pytest.raises(ValueError, match=r"shape \(7,\).*23 joint targets"):
        robot.apply(robot.new_data(), np.zeros(7))


def test_camera_shows_the_balls_at_small_size(robot):
    data = robot.new_data()
    robot.set_balls(data, None)
    empty = robot.render(data)
    assert empty.shape == (64, 64, 3) and empty.dtype == np.uint8
    robot.set_balls(data, {"red": np.array([0.3, 0.2, 1.0])})
    image = robot.render(data).astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90)
    assert red.sum() >= 6  # visible at 64 px
    assert ((empty[..., 0] > 150) & (empty[..., 1] < 90) & (empty[..., 2] < 90)).sum() == 0


def _red_mask(image: np.ndarray) -> np.ndarray:
    image = image.astype(int)
    return (image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90)


def test_every_named_camera_exists_and_a_bad_name_fails():
    assert set(CAMERA_POSES) == set(CAMERAS)
    with pytest.raises(ValueError, match=r"sim.camera='top': choose from \['front', 'upper_body'\]"):
        SimSettings(camera="top")


def test_upper_body_camera_shows_a_ball_larger_and_every_ball_position_in_frame():
    """The upper_body camera narrows the view from 55 to 33 degrees at the same distance, so a ball
    covers (tan 27.5 / tan 16.5)^2 ~ 3.1x the pixels; and a ball at any corner of the reach tasks'
    ball region lies wholly inside the frame (no red pixel on the border)."""
    size = 96
    counts = {}
    for camera in CAMERAS:
        with AthenaRobot(SimSettings(image_size=size, camera=camera)) as robot:
            data = robot.new_data()
            robot.set_balls(data, {"red": np.array([0.3, 0.0, 1.05])})
            counts[camera] = _red_mask(robot.render(data)).sum()
            if camera == "upper_body":
                for x in _BALL_X:
                    for y in _BALL_Y:
                        for z in _BALL_Z:
                            robot.set_balls(data, {"red": np.array([x, y, z])})
                            red = _red_mask(robot.render(data))
                            border = np.concatenate([red[0], red[-1], red[:, 0], red[:, -1]])
                            assert red.sum() > 0.5 * counts["upper_body"] and not border.any(), (x, y, z)
    assert 2.2 < counts["upper_body"] / counts["front"] < 4.5, counts


def test_stl_reader(tmp_path):
    triangles = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[1, 0, 0], [1, 1, 0], [0, 1, 0]]], np.float32)
    record = np.zeros(2, np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    record["v"] = triangles
    path = tmp_path / "quad.stl"
    path.write_bytes(b"solid ascii-looking header".ljust(80) + np.uint32(2).tobytes() + record.tobytes())
    vertices, faces = read_binary_stl(path)
    assert len(vertices) == 4 and faces.shape == (2, 3)
    np.testing.assert_array_equal(vertices[faces], triangles)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a binary STL"):
        read_binary_stl(path)
