"""Loading Isaac episode folders and pickled teleop demos: contents, options, and every kind of bad input."""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_factories import (
    ACTION_DIM,
    STATE_DIM,
    CallOnUnpickle,
    make_demo,
    make_isaac_dataset,
    make_pickle_demos,
    truncate_file,
    write_isaac_episode,
    write_pickle,
)
from PIL import Image

from vla.data import DataError, UnsafePickleError, load_isaac_episodes, load_pickle_demos, safe_load_pickle

# ----------------------------------------------------------------------------------------------- Isaac


def test_isaac_episodes_load_with_their_arrays_metadata_and_frames(tmp_path: Path) -> None:
    written = [write_isaac_episode(tmp_path / f"ep_{i}", seed=i, steps=12) for i in (0, 1, 2)]
    result = load_isaac_episodes(tmp_path)

    assert [e.episode_id for e in result.episodes] == ["ep_0", "ep_1", "ep_2"]
    assert result.skipped == []
    for episode, arrays in zip(result.episodes, written):
        assert episode.source == "isaac"
        assert episode.actions.dtype == np.float32 and episode.states.dtype == np.float32
        np.testing.assert_array_equal(episode.actions, arrays["actions"])
        np.testing.assert_array_equal(episode.states, arrays["states"])
        np.testing.assert_array_equal(episode.timestamps, arrays["timestamps"])
        assert (episode.action_dim, episode.state_dim, episode.num_steps) == (ACTION_DIM, STATE_DIM, 12)
        assert episode.success is True and episode.fps == 30.0 and episode.frames is None
    first = result.episodes[0]
    # `instructions` first, then task_description, then task_descriptions; all candidates kept.
    assert first.instruction == "pick up the cube 0"
    assert first.instructions == [
        "pick up the cube 0",
        "grab the cube",
        "pick up the cube (task 0)",
        "pick up the cube",
    ]
    assert first.metadata["seed"] == 0


def test_isaac_frames_follow_natural_step_order_and_decode_to_rgb(tmp_path: Path) -> None:
    write_isaac_episode(tmp_path / "ep", steps=12)
    images = tmp_path / "ep" / "images"
    for t in range(12):  # frame t is a flat image of value 10 * t; frame_10 sorts after frame_9
        Image.fromarray(np.full((32, 32, 3), 10 * t, dtype=np.uint8)).save(images / f"frame_{t}.png")
    Image.fromarray(np.full((32, 32), 200, dtype=np.uint8), mode="L").save(images / "frame_11.png")

    episode = load_isaac_episodes(tmp_path).episodes[0]
    assert [p.name for p in episode.frame_paths] == [f"frame_{t}.png" for t in range(12)]
    for t in range(11):
        frame = episode.frame(t)
        assert frame.dtype == np.uint8 and frame.shape == (32, 32, 3)
        assert (frame == 10 * t).all()
    assert episode.frame(11).shape == (32, 32, 3) and (episode.frame(11) == 200).all()  # grayscale -> RGB
    with pytest.raises(IndexError):
        episode.frame(12)


def test_isaac_jpeg_frames_trajectory_npz_and_observations_key(tmp_path: Path) -> None:
    arrays = write_isaac_episode(
        tmp_path / "ep",
        image_format="jpeg",
        npz_name="trajectory.npz",
        state_key="observations",
        timestamps=False,
    )
    episode = load_isaac_episodes(tmp_path).episodes[0]
    np.testing.assert_array_equal(episode.states, arrays["observations"])
    assert episode.timestamps is None
    assert episode.frame_paths[0].suffix == ".jpg" and episode.frame(3).shape == (32, 32, 3)


def test_isaac_episode_without_states_has_zero_state_dims(tmp_path: Path) -> None:
    write_isaac_episode(tmp_path / "ep", steps=8)
    with np.load(tmp_path / "ep" / "episode_data.npz") as npz:
        actions = npz["actions"]
    np.savez(tmp_path / "ep" / "episode_data.npz", actions=actions)
    episode = load_isaac_episodes(tmp_path).episodes[0]
    assert episode.states.shape == (8, 0)


@pytest.mark.parametrize(
    ("metadata", "instruction"),
    [
        ({"task_description": "walk forward"}, "walk forward"),
        ({"task_descriptions": ["turn left", "rotate"]}, "turn left"),
        ({"instructions": [], "task_description": "sit", "task_descriptions": ["sit down"]}, "sit"),
        ({"instructions": ["  ", "stand up"], "task_description": "stand"}, "stand up"),
    ],
)
def test_isaac_instruction_fallback_order(tmp_path: Path, metadata: dict, instruction: str) -> None:
    write_isaac_episode(tmp_path / "ep", metadata={**metadata, "success": True})
    episode = load_isaac_episodes(tmp_path).episodes[0]
    assert episode.instruction == instruction and episode.instructions[0] == instruction


def test_isaac_success_comes_from_metadata(tmp_path: Path) -> None:
    # data.success_only is applied by vla.data.quality (tests/test_data_quality.py), not by the loader.
    make_isaac_dataset(tmp_path / "both", n_episodes=2, steps=8, successes=[True, False])
    assert [e.success for e in load_isaac_episodes(tmp_path / "both").episodes] == [True, False]
    write_isaac_episode(tmp_path / "none" / "ep", metadata={"task_description": "walk"})
    assert load_isaac_episodes(tmp_path / "none").episodes[0].success is None


def _rewrite_npz(episode_dir: Path, **changes: np.ndarray) -> None:
    with np.load(episode_dir / "episode_data.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(changes)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    np.savez(episode_dir / "episode_data.npz", **arrays)


def _with_nan_action(d: Path) -> None:
    with np.load(d / "episode_data.npz") as npz:
        actions = npz["actions"].copy()
    actions[4, 7] = np.nan
    _rewrite_npz(d, actions=actions)


def _with_inf_state(d: Path) -> None:
    with np.load(d / "episode_data.npz") as npz:
        states = npz["states"].copy()
    states[2, 0] = np.inf
    _rewrite_npz(d, states=states)


def _overwrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


# Each corruption is applied to episode_001 of a three-episode dataset; the error must name the episode and
# the file or key at fault.
ISAAC_CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing metadata.json": (lambda d: (d / "metadata.json").unlink(), "metadata.json"),
    "corrupt metadata.json": (lambda d: _overwrite(d / "metadata.json", b'{"success": tr'), "metadata.json"),
    "metadata without instruction": (
        lambda d: (d / "metadata.json").write_text(json.dumps({"success": True})),
        "instruction",
    ),
    "missing npz": (lambda d: (d / "episode_data.npz").unlink(), "episode_data.npz"),
    "truncated npz": (lambda d: truncate_file(d / "episode_data.npz"), "episode_data.npz"),
    "garbage npz": (lambda d: _overwrite(d / "episode_data.npz", os.urandom(500)), "episode_data.npz"),
    "object array in npz": (
        lambda d: np.savez(d / "episode_data.npz", actions=np.array([{"run": "code"}], dtype=object)),
        "episode_data.npz",
    ),
    "success not a bool": (
        lambda d: (d / "metadata.json").write_text(
            json.dumps({"task_description": "walk", "success": "yes"})
        ),
        "'success' must be true or false",
    ),
    "missing actions key": (lambda d: _rewrite_npz(d, actions=None), "'actions'"),
    "1-D actions": (lambda d: _rewrite_npz(d, actions=np.zeros(12, np.float32)), "'actions'"),
    "NaN in actions": (
        _with_nan_action,
        "'actions' has 1 non-finite values (NaN/inf), first at step 4, dim 7",
    ),
    "inf in states": (_with_inf_state, "'states' has 1 non-finite"),
    "states shorter than actions": (
        lambda d: _rewrite_npz(d, states=np.zeros((11, 47))),
        "'states' has 11 steps",
    ),
    "missing image": (lambda d: (d / "images" / "frame_5.png").unlink(), "11 images"),
    "missing images folder": (
        lambda d: [p.unlink() for p in (d / "images").iterdir()] and (d / "images").rmdir(),
        "images",
    ),
    "truncated PNG": (lambda d: truncate_file(d / "images" / "frame_3.png"), "frame_3.png"),
    "garbage PNG": (lambda d: _overwrite(d / "images" / "frame_3.png", b"not an image" * 20), "frame_3.png"),
}


@pytest.mark.parametrize("corruption", list(ISAAC_CORRUPTIONS))
def test_isaac_bad_episode_raises_naming_it(tmp_path: Path, corruption: str) -> None:
    corrupt, fragment = ISAAC_CORRUPTIONS[corruption]
    make_isaac_dataset(tmp_path, n_episodes=3, steps=12)
    corrupt(tmp_path / "episode_001")
    with pytest.raises(DataError) as info:
        load_isaac_episodes(tmp_path)
    message = str(info.value)
    assert "episode_001" in message and fragment in message


@pytest.mark.parametrize("corruption", list(ISAAC_CORRUPTIONS))
def test_isaac_bad_episode_is_skipped_and_logged(
    tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt, fragment = ISAAC_CORRUPTIONS[corruption]
    make_isaac_dataset(tmp_path, n_episodes=3, steps=12)
    corrupt(tmp_path / "episode_001")
    with caplog.at_level(logging.WARNING, logger="vla.data"):
        result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["episode_000", "episode_002"]
    assert [s.episode_id for s in result.skipped] == ["episode_001"]
    assert fragment in result.skipped[0].reason
    assert any("episode_001" in r.getMessage() and fragment in r.getMessage() for r in caplog.records)


def test_isaac_truncated_jpeg_is_found_at_load(tmp_path: Path) -> None:
    make_isaac_dataset(tmp_path, n_episodes=2, steps=8, image_format="jpeg")
    path = tmp_path / "episode_001" / "images" / "frame_2.jpg"
    path.write_bytes(path.read_bytes()[:-5])  # PIL's verify() alone accepts this file
    with pytest.raises(DataError, match=r"'episode_001'.*frame_2\.jpg.*truncated"):
        load_isaac_episodes(tmp_path)


def test_isaac_action_dim_mismatch_between_episodes(tmp_path: Path) -> None:
    make_isaac_dataset(tmp_path, n_episodes=3, steps=8)
    write_isaac_episode(tmp_path / "episode_001", steps=8, action_dim=24)
    with pytest.raises(DataError, match=r"'episode_001'.*action dimension 24 differs from 23"):
        load_isaac_episodes(tmp_path)
    result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [s.episode_id for s in result.skipped] == ["episode_001"]


def test_isaac_odd_first_episode_does_not_decide_the_dimension(tmp_path: Path) -> None:
    make_isaac_dataset(tmp_path, n_episodes=3, steps=8)
    write_isaac_episode(tmp_path / "episode_000", steps=8, action_dim=24)
    result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["episode_001", "episode_002"]
    assert [s.episode_id for s in result.skipped] == ["episode_000"]


def test_isaac_expected_dims_from_the_caller(tmp_path: Path) -> None:
    make_isaac_dataset(tmp_path, n_episodes=2, steps=8)
    assert len(load_isaac_episodes(tmp_path, expected_action_dim=23, expected_state_dim=47).episodes) == 2
    with pytest.raises(
        DataError, match=r"'episode_000'.*action dimension 23 differs from expected_action_dim=7"
    ):
        load_isaac_episodes(tmp_path, expected_action_dim=7)
    with pytest.raises(DataError, match="state dimension 47 differs from expected_state_dim=3"):
        load_isaac_episodes(tmp_path, expected_state_dim=3)
    with pytest.raises(DataError, match="no usable episodes"):  # skip leaves nothing
        load_isaac_episodes(tmp_path, expected_action_dim=7, on_error="skip")


def test_isaac_empty_or_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no episode folders"):
        load_isaac_episodes(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_isaac_episodes(tmp_path / "absent")
    with pytest.raises(ValueError, match="on_error"):
        load_isaac_episodes(tmp_path, on_error="ignore")  # type: ignore[arg-type]


def test_isaac_lazy_decode_of_a_file_damaged_after_loading(tmp_path: Path) -> None:
    write_isaac_episode(tmp_path / "ep", steps=8)
    episode = load_isaac_episodes(tmp_path).episodes[0]
    (tmp_path / "ep" / "images" / "frame_4.png").write_bytes(b"gone")
    with pytest.raises(DataError, match=r"'ep'.*frame_4\.png"):
        episode.frame(4)


# ---------------------------------------------------------------------------------------- pickle demos


def test_pickle_demos_pair_each_image_with_the_next_action_and_join_the_gripper(tmp_path: Path) -> None:
    demos = make_pickle_demos(tmp_path / "demos.pkl", n_demos=3, n_frames=12)
    result = load_pickle_demos(tmp_path / "demos.pkl")

    assert [e.episode_id for e in result.episodes] == ["demos.pkl#0", "demos.pkl#1", "demos.pkl#2"]
    for episode, demo in zip(result.episodes, demos):
        frames = demo["frames"]
        assert episode.source == "pickle" and episode.success is None
        assert episode.instruction == demo["instruction"] and episode.instructions == [demo["instruction"]]
        assert episode.num_steps == 11 and episode.action_dim == ACTION_DIM and episode.state_dim == STATE_DIM
        for i in range(11):
            np.testing.assert_array_equal(episode.frame(i), frames[i]["image"])
            np.testing.assert_array_equal(episode.states[i], frames[i]["robot_state"])
            np.testing.assert_array_equal(episode.actions[i, :-1], frames[i + 1]["action"])
            assert episode.actions[i, -1] == frames[i + 1]["gripper"]
        assert episode.metadata["timestamp"] == demo["timestamp"]


def test_pickle_demos_without_next_action_pairing_or_gripper(tmp_path: Path) -> None:
    demos = make_pickle_demos(tmp_path / "demos.pkl", n_demos=1, n_frames=10)
    for frame in demos[0]["frames"]:
        del frame["gripper"]  # not needed when it is not joined
    write_pickle(tmp_path / "demos.pkl", demos)

    episode = load_pickle_demos(tmp_path / "demos.pkl", next_action=False, join_gripper=False).episodes[0]
    assert episode.num_steps == 10 and episode.action_dim == ACTION_DIM - 1
    for i in range(10):
        np.testing.assert_array_equal(episode.actions[i], demos[0]["frames"][i]["action"])
        np.testing.assert_array_equal(episode.frame(i), demos[0]["frames"][i]["image"])
    with pytest.raises(DataError, match=r"frame 0 is missing key 'gripper'"):
        load_pickle_demos(tmp_path / "demos.pkl", join_gripper=True)


def test_pickle_vector_gripper_is_appended_whole(tmp_path: Path) -> None:
    demo = make_demo(n_frames=4)
    for frame in demo["frames"]:
        frame["gripper"] = np.array([0.25, 0.75], dtype=np.float32)
    write_pickle(tmp_path / "d.pkl", [demo])
    episode = load_pickle_demos(tmp_path / "d.pkl").episodes[0]
    assert episode.action_dim == ACTION_DIM + 1
    np.testing.assert_array_equal(episode.actions[:, -2:], np.tile([0.25, 0.75], (3, 1)))


def test_pickle_folder_loads_every_file_in_natural_order(tmp_path: Path) -> None:
    make_pickle_demos(tmp_path / "session_10.pkl", n_demos=1)
    make_pickle_demos(tmp_path / "session_2.pickle", n_demos=2)
    (tmp_path / "notes.txt").write_text("not a pickle")
    ids = [e.episode_id for e in load_pickle_demos(tmp_path).episodes]
    assert ids == ["session_2.pickle#0", "session_2.pickle#1", "session_10.pkl#0"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_admits_numpy_builtins_and_datetime(tmp_path: Path, protocol: int) -> None:
    payload = {
        "arrays": [
            np.arange(6, dtype=np.float32).reshape(2, 3),
            np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")]),
        ],
        "scalars": [
            np.float32(1.5),
            np.int64(-3),
            np.bool_(True),
            2.0,
            7,
            None,
            "text",
            b"\x00\xff",
            complex(1, 2),
        ],
        "containers": (set([1, 2]), frozenset(["x"]), bytearray(b"ab"), [1, {"k": (2,)}]),
        "dtypes": [np.dtype("float32"), type(np.dtype("float32"))],
        "when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "other_times": [datetime.date(2024, 5, 1), datetime.time(1, 2), datetime.timedelta(seconds=3)],
    }
    write_pickle(tmp_path / "ok.pkl", payload, protocol=protocol)
    loaded = safe_load_pickle(tmp_path / "ok.pkl")
    np.testing.assert_array_equal(loaded["arrays"][0], payload["arrays"][0])
    np.testing.assert_array_equal(loaded["arrays"][1], payload["arrays"][1])
    assert loaded["scalars"] == payload["scalars"] and loaded["containers"] == payload["containers"]
    assert loaded["dtypes"] == payload["dtypes"] and loaded["when"] == payload["when"]
    assert loaded["other_times"] == payload["other_times"]


def _hostile_payloads(marker: Path) -> dict[str, tuple[object, str]]:
    return {
        "os.system": (CallOnUnpickle(os.system, f"touch {marker}"), "system"),
        "open for writing": (CallOnUnpickle(open, str(marker), "w"), "open"),
        "eval": (CallOnUnpickle(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        "subprocess.run": (CallOnUnpickle(subprocess.run, ["touch", str(marker)]), "subprocess.run"),
    }


@pytest.mark.parametrize("name", ["os.system", "open for writing", "eval", "subprocess.run"])
def test_hostile_payloads_do_create_the_marker_with_plain_pickle(tmp_path: Path, name: str) -> None:
    # The control for the test below: unrestricted unpickling runs the payload.
    marker = tmp_path / "pwned"
    payload, _ = _hostile_payloads(marker)[name]
    result = pickle.loads(pickle.dumps(payload))
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


@pytest.mark.parametrize("name", ["os.system", "open for writing", "eval", "subprocess.run"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_pickle_with_forbidden_global_fails_and_runs_nothing(
    tmp_path: Path, name: str, on_error: str
) -> None:
    marker = tmp_path / "pwned"
    payload, global_name = _hostile_payloads(marker)[name]
    # Hidden inside an otherwise valid demo, so the check cannot rely on the top level.
    demo = make_demo(n_frames=3)
    demo["frames"][1]["action"] = payload
    write_pickle(tmp_path / "demos" / "evil.pkl", [demo])
    with pytest.raises(UnsafePickleError) as info:
        load_pickle_demos(tmp_path / "demos", on_error=on_error)  # type: ignore[arg-type]
    message = str(info.value)
    assert "evil.pkl" in message and "forbidden global" in message and global_name in message
    assert not marker.exists()


def test_codecs_encode_only_decodes_bytes(tmp_path: Path) -> None:
    # Protocol 0-2 bytes go through _codecs.encode(text, "latin1"); no other codec is admitted.
    (tmp_path / "rot13.pkl").write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(DataError, match=r"rot13\.pkl.*rot13"):
        safe_load_pickle(tmp_path / "rot13.pkl")


def _set_frame(index: int, key: str, value: object) -> Callable[[list], None]:
    def change(demos: list) -> None:
        demos[1]["frames"][index][key] = value

    return change


# Each change is applied to demo #1 of three; the error must name the demo, and the frame or key at fault.
DEMO_CORRUPTIONS: dict[str, tuple[Callable[[list], None], str]] = {
    "missing frames": (lambda demos: demos[1].pop("frames"), "missing key 'frames'"),
    "missing instruction": (lambda demos: demos[1].pop("instruction"), "missing key 'instruction'"),
    "missing action": (lambda demos: demos[1]["frames"][5].pop("action"), "frame 5 is missing key 'action'"),
    "NaN action": (
        _set_frame(5, "action", np.full(22, np.nan, np.float32)),
        "frame 5 'action' has non-finite",
    ),
    "inf state": (_set_frame(2, "robot_state", np.full(47, np.inf)), "frame 2 'robot_state' has non-finite"),
    "NaN gripper": (_set_frame(3, "gripper", float("nan")), "frame 3 'gripper' has non-finite"),
    "float image": (
        _set_frame(4, "image", np.zeros((32, 32, 3), np.float32)),
        "frame 4 'image' must be uint8",
    ),
    "grayscale image": (
        _set_frame(4, "image", np.zeros((32, 32), np.uint8)),
        "frame 4 'image' must be uint8",
    ),
    "image size changes": (
        _set_frame(4, "image", np.zeros((16, 32, 3), np.uint8)),
        "frame 4 'image' is (16, 32, 3)",
    ),
    "ragged actions": (_set_frame(6, "action", np.zeros(21, np.float32)), "frame 6 'action' has 22 values"),
    "single frame": (lambda demos: demos[1].update(frames=demos[1]["frames"][:1]), "need at least 2"),
    "not a dict": (lambda demos: demos.__setitem__(1, ["frames"]), "expected a dict"),
}


@pytest.mark.parametrize("corruption", list(DEMO_CORRUPTIONS))
def test_pickle_bad_demo_raises_or_is_skipped(
    tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    change, fragment = DEMO_CORRUPTIONS[corruption]
    demos = [make_demo(n_frames=8, seed=i) for i in range(3)]
    change(demos)
    write_pickle(tmp_path / "demos.pkl", demos)
    with pytest.raises(DataError) as info:
        load_pickle_demos(tmp_path / "demos.pkl")
    assert "demos.pkl#1" in str(info.value) and fragment in str(info.value)

    with caplog.at_level(logging.WARNING, logger="vla.data"):
        result = load_pickle_demos(tmp_path / "demos.pkl", on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["demos.pkl#0", "demos.pkl#2"]
    assert [(s.episode_id, fragment in s.reason) for s in result.skipped] == [("demos.pkl#1", True)]
    assert any("demos.pkl#1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: truncate_file(p), "cannot unpickle"),
        (lambda p: p.write_bytes(os.urandom(64)), "cannot unpickle"),
        (lambda p: p.write_bytes(b""), "cannot unpickle"),
        (lambda p: write_pickle(p, {"instruction": "a dict, not a list"}), "expected a list of demos"),
    ],
)
def test_pickle_unreadable_file_raises_or_is_skipped(tmp_path: Path, damage: Callable, fragment: str) -> None:
    make_pickle_demos(tmp_path / "a.pkl", n_demos=2, n_frames=6)
    make_pickle_demos(tmp_path / "b.pkl", n_demos=2, n_frames=6)
    damage(tmp_path / "a.pkl")
    with pytest.raises(DataError, match=fragment) as info:
        load_pickle_demos(tmp_path)
    assert "a.pkl" in str(info.value)
    result = load_pickle_demos(tmp_path, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["b.pkl#0", "b.pkl#1"]
    assert [s.episode_id for s in result.skipped] == ["a.pkl"] and fragment in result.skipped[0].reason


def test_pickle_action_dim_mismatch_and_expected_dim(tmp_path: Path) -> None:
    demos = [
        make_demo(n_frames=5, seed=0),
        make_demo(n_frames=5, seed=1, arm_dim=20),
        make_demo(n_frames=5, seed=2),
    ]
    write_pickle(tmp_path / "d.pkl", demos)
    with pytest.raises(DataError, match=r"'d\.pkl#1'.*action dimension 21 differs from 23"):
        load_pickle_demos(tmp_path / "d.pkl")
    assert [s.episode_id for s in load_pickle_demos(tmp_path / "d.pkl", on_error="skip").skipped] == [
        "d.pkl#1"
    ]
    with pytest.raises(DataError, match="expected_action_dim=30"):
        load_pickle_demos(tmp_path / "d.pkl", expected_action_dim=30)


def test_pickle_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no pickle files"):
        load_pickle_demos(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_pickle_demos(tmp_path / "absent.pkl")
    write_pickle(tmp_path / "empty.pkl", [])
    with pytest.raises(DataError, match=r"empty\.pkl: no usable demos"):
        load_pickle_demos(tmp_path / "empty.pkl")


def test_pickle_of_old_numpy_module_names_loads(tmp_path: Path) -> None:
    # numpy 1.x pickles name numpy.core.multiarray; numpy 2 writes numpy._core. Both must load.
    data = pickle.dumps(np.arange(4, dtype=np.int16), protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "old.pkl").write_bytes(data)
    np.testing.assert_array_equal(safe_load_pickle(tmp_path / "old.pkl"), np.arange(4, dtype=np.int16))
