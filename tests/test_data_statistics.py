"""Episode-level train/val split, and statistics in OpenVLA's dataset_statistics.json format."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
from data_factories import make_isaac_dataset

from vla.data import (
    DataError,
    Episode,
    compute_statistics,
    load_isaac_episodes,
    load_statistics,
    save_statistics,
    split_episodes,
)

OPENVLA_KEYS = ["mean", "std", "max", "min", "q01", "q99"]


def episode(episode_id: str, actions: np.ndarray, states: np.ndarray | None = None) -> Episode:
    actions = np.asarray(actions, dtype=np.float32)
    states = np.zeros((len(actions), 0), np.float32) if states is None else np.asarray(states, np.float32)
    return Episode(
        episode_id=episode_id,
        source="pickle",
        path=Path(f"{episode_id}.pkl"),
        instruction="do it",
        instructions=["do it"],
        actions=actions,
        states=states,
        frames=np.zeros((len(actions), 2, 2, 3), np.uint8),
    )


def episodes_named(n: int) -> list[Episode]:
    return [episode(f"ep_{i:02d}", np.zeros((2, 3))) for i in range(n)]


# ----------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_complete() -> None:
    episodes = episodes_named(20)
    train, val = split_episodes(episodes, val_fraction=0.2, seed=7)
    train_ids, val_ids = [e.episode_id for e in train], [e.episode_id for e in val]
    assert len(val_ids) == 4 and len(train_ids) == 16
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == [e.episode_id for e in episodes]
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # input order kept
    again = split_episodes(episodes, val_fraction=0.2, seed=7)
    assert [e.episode_id for e in again[1]] == val_ids


def test_split_depends_on_ids_and_seed_not_on_input_order() -> None:
    episodes = episodes_named(20)
    shuffled = episodes[:]
    random.Random(0).shuffle(shuffled)
    val_ids = {e.episode_id for e in split_episodes(episodes, 0.25, seed=3)[1]}
    assert {e.episode_id for e in split_episodes(shuffled, 0.25, seed=3)[1]} == val_ids
    other_seeds = [{e.episode_id for e in split_episodes(episodes, 0.25, seed=s)[1]} for s in range(4, 9)]
    assert any(ids != val_ids for ids in other_seeds)


@pytest.mark.parametrize(
    ("n", "val_fraction", "num_val"),
    [(2, 0.01, 1), (2, 0.99, 1), (3, 0.5, 2), (10, 0.25, 3), (10, 0.5, 5), (1, 0.5, 0), (5, 0.0, 0)],
)
def test_split_sizes_keep_an_episode_on_each_side(n: int, val_fraction: float, num_val: int) -> None:
    train, val = split_episodes(episodes_named(n), val_fraction, seed=0)
    assert (len(train), len(val)) == (n - num_val, num_val)


def test_split_groups_keep_a_scene_on_one_side_and_leave_plain_splits_as_they_were() -> None:
    """Episodes naming the same metadata `split_group` (the simulator's counterfactual twins of a scene)
    land on the same side; without groups the split is the one earlier runs were made with (the first
    num_val of a seeded permutation of the sorted ids), so their validation sets do not move."""
    plain = episodes_named(30)
    order = np.random.default_rng(5).permutation(30)
    expected = {sorted(e.episode_id for e in plain)[i] for i in order[:6]}
    assert {e.episode_id for e in split_episodes(plain, 0.2, seed=5)[1]} == expected

    grouped = []
    for i in range(30):
        grouped.append(episode(f"scene_{i:02d}", np.zeros((2, 3))))
        for twin in range(1, 1 + i % 3):  # 0, 1 or 2 twins
            grouped.append(episode(f"scene_{i:02d}_cf{twin}", np.zeros((2, 3))))
            grouped[-1].metadata = {"split_group": f"scene_{i:02d}"}
    for seed in range(5):
        train, val = split_episodes(grouped, 0.2, seed=seed)
        scenes = [{e.episode_id[:8] for e in side} for side in (train, val)]
        assert not scenes[0] & scenes[1] and len(train) + len(val) == len(grouped)
        assert 0.2 * len(grouped) <= len(val) < 0.2 * len(grouped) + 3  # whole groups, at most 3 over
    pair = [episode("a", np.zeros((2, 3))), episode("a_cf1", np.zeros((2, 3)))]
    pair[1].metadata = {"split_group": "a"}
    assert [len(side) for side in split_episodes(pair, 0.5, seed=0)] == [2, 0]  # train keeps the group


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(episodes_named(4), 1.0, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(episodes_named(4), -0.1, seed=0)
    with pytest.raises(DataError, match="no episodes"):
        split_episodes([], 0.1, seed=0)
    with pytest.raises(DataError, match="repeated: \\['ep_00'\\]"):
        split_episodes(episodes_named(3) + episodes_named(1), 0.1, seed=0)


# ------------------------------------------------------------------------------------------ statistics


def test_statistics_match_hand_computed_values() -> None:
    # Dimension 0 holds 0, 1, ..., 100 over two episodes: mean 50, population std sqrt((101^2 - 1) / 12),
    # and linear-interpolated quantiles q01 = 1, q99 = 99. Dimension 1 is constant 5.
    values = np.arange(101, dtype=np.float64)
    actions = np.stack([values, np.full(101, 5.0)], axis=1)
    states = np.stack([-values], axis=1)
    episodes = [episode("a", actions[:40], states[:40]), episode("b", actions[40:], states[40:])]

    stats = compute_statistics(episodes)
    action = stats["action"]
    assert list(action) == OPENVLA_KEYS + ["mask"] and list(stats["proprio"]) == OPENVLA_KEYS
    assert action["mean"] == pytest.approx([50.0, 5.0])
    assert action["std"] == pytest.approx([math.sqrt((101**2 - 1) / 12), 0.0])
    assert (action["min"], action["max"]) == ([0.0, 5.0], [100.0, 5.0])
    assert action["q01"] == pytest.approx([1.0, 5.0]) and action["q99"] == pytest.approx([99.0, 5.0])
    assert action["mask"] == [True, True]
    assert stats["proprio"]["mean"] == pytest.approx([-50.0]) and stats["proprio"]["q01"] == pytest.approx(
        [-99.0]
    )
    assert (stats["num_transitions"], stats["num_trajectories"]) == (101, 2)


def test_statistics_match_numpy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 23)).astype(np.float32) * 3 + 1 for n in (8, 17, 32)]
    states = [rng.uniform(-2, 2, size=(len(a), 47)).astype(np.float32) for a in arrays]
    stats = compute_statistics([episode(f"e{i}", a, s) for i, (a, s) in enumerate(zip(arrays, states))])
    for group, data in (("action", np.vstack(arrays)), ("proprio", np.vstack(states))):
        data = data.astype(np.float64)
        expected = {
            "mean": data.mean(0),
            "std": data.std(0),
            "max": data.max(0),
            "min": data.min(0),
            "q01": np.quantile(data, 0.01, axis=0),
            "q99": np.quantile(data, 0.99, axis=0),
        }
        for key, value in expected.items():
            np.testing.assert_allclose(
                stats[group][key], value, rtol=1e-6, atol=1e-6, err_msg=f"{group} {key}"
            )
    assert stats["num_transitions"] == 57
    json.dumps(stats, allow_nan=False)  # plain JSON types only


def test_statistics_mask_dims_and_empty_proprio() -> None:
    episodes = [episode("a", np.ones((4, 23)))]
    stats = compute_statistics(episodes, mask_dims=(0, -1))
    assert stats["action"]["mask"] == [False] + [True] * 21 + [False]
    assert stats["proprio"]["mean"] == [] and stats["proprio"]["q99"] == []
    with pytest.raises(ValueError, match="mask_dims entry 23"):
        compute_statistics(episodes, mask_dims=(23,))


def test_statistics_reject_empty_or_inconsistent_episodes() -> None:
    with pytest.raises(DataError, match="no episodes"):
        compute_statistics([])
    with pytest.raises(DataError, match="episode 'b': action_dim 4 differs from 3"):
        compute_statistics([episode("a", np.zeros((2, 3))), episode("b", np.zeros((2, 4)))])


# ------------------------------------------------------------------------------------------- JSON I/O


def some_statistics() -> dict:
    rng = np.random.default_rng(1)
    return {
        "athena_isaac": compute_statistics(
            [episode("a", rng.normal(size=(10, 23)), rng.normal(size=(10, 47)))]
        )
    }


def test_save_and_load_round_trip_in_openvla_layout(tmp_path: Path) -> None:
    stats = some_statistics()
    path = tmp_path / "run" / "dataset_statistics.json"
    save_statistics(path, stats)
    assert load_statistics(path) == stats
    raw = json.loads(path.read_text())
    assert set(raw["athena_isaac"]) == {"action", "proprio", "num_transitions", "num_trajectories"}
    assert os.listdir(path.parent) == ["dataset_statistics.json"]  # no temp file left behind
    assert (path.stat().st_mode & 0o777) == 0o644


def test_save_replaces_atomically_and_keeps_the_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dataset_statistics.json"
    save_statistics(path, some_statistics())
    before = path.read_text()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    changed = {"other": some_statistics()["athena_isaac"]}
    with pytest.raises(OSError, match="disk full"):
        save_statistics(path, changed)
    assert path.read_text() == before and os.listdir(tmp_path) == ["dataset_statistics.json"]
    monkeypatch.undo()
    save_statistics(path, changed)
    assert list(load_statistics(path)) == ["other"]


def test_save_validates_before_writing(tmp_path: Path) -> None:
    stats = some_statistics()
    del stats["athena_isaac"]["action"]["mask"]
    with pytest.raises(DataError, match="'athena_isaac' -> 'action': missing key 'mask'"):
        save_statistics(tmp_path / "s.json", stats)
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    ("location", "key"),
    [
        ((), "action"),
        ((), "proprio"),
        ((), "num_transitions"),
        ((), "num_trajectories"),
        (("action",), "q01"),
        (("action",), "mask"),
        (("proprio",), "std"),
        (("proprio",), "q99"),
    ],
)
def test_load_names_the_file_dataset_and_missing_key(tmp_path: Path, location: tuple, key: str) -> None:
    stats = some_statistics()
    target = stats["athena_isaac"]
    for part in location:
        target = target[part]
    del target[key]
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(stats))
    with pytest.raises(DataError) as info:
        load_statistics(path)
    message = str(info.value)
    assert str(path) in message and "'athena_isaac'" in message and f"missing key {key!r}" in message


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda s: s["action"].update(mask=[True] * 3), "3 entries for 23 dimensions"),
        (lambda s: s["action"].update(mask=[1] * 23), "list of true/false"),
        (lambda s: s["action"].update(q01=[0.0] * 22), "different lengths"),
        (
            lambda s: s["proprio"].update(mean=[float("nan")] * 47),
            "'proprio' -> 'mean': expected a list of finite",
        ),
        (lambda s: s.update(num_transitions=-1), "'num_transitions' must be a non-negative integer"),
    ],
)
def test_load_rejects_malformed_values(tmp_path: Path, edit, fragment: str) -> None:
    stats = some_statistics()
    edit(stats["athena_isaac"])
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(stats))  # json writes NaN as a bare NaN token, which json.loads accepts
    with pytest.raises(DataError, match="dataset_statistics.json") as info:
        load_statistics(path)
    assert fragment in str(info.value)


def test_load_rejects_missing_invalid_or_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent.json: no such statistics file"):
        load_statistics(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text('{"athena": {"action": ')
    with pytest.raises(DataError, match="broken.json: not a valid JSON"):
        load_statistics(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(DataError, match="empty.json: expected a non-empty object"):
        load_statistics(tmp_path / "empty.json")


def test_load_accepts_a_hand_written_openvla_file(tmp_path: Path) -> None:
    # Shaped like the statistics OpenVLA ships (7-D actions with the gripper un-normalized).
    stats = {"q": [0.0] * 7, "p": [0.0] * 8}
    text = json.dumps(
        {
            "bridge_orig": {
                "action": {**{k: stats["q"] for k in OPENVLA_KEYS}, "mask": [True] * 6 + [False]},
                "proprio": {k: stats["p"] for k in OPENVLA_KEYS},
                "num_transitions": 2135463,
                "num_trajectories": 60064,
            }
        }
    )
    (tmp_path / "dataset_statistics.json").write_text(text)
    loaded = load_statistics(tmp_path / "dataset_statistics.json")
    assert loaded["bridge_orig"]["action"]["mask"][-1] is False


def test_pipeline_from_episode_folders_to_statistics_file(tmp_path: Path) -> None:
    make_isaac_dataset(tmp_path / "data", n_episodes=5, steps=8)
    episodes = load_isaac_episodes(tmp_path / "data").episodes
    train, val = split_episodes(episodes, val_fraction=0.2, seed=0)
    stats = compute_statistics(train, mask_dims=(-1,))
    save_statistics(tmp_path / "dataset_statistics.json", {"athena": stats})
    loaded = load_statistics(tmp_path / "dataset_statistics.json")["athena"]
    assert (loaded["num_trajectories"], loaded["num_transitions"]) == (4, 32)
    np.testing.assert_allclose(
        loaded["action"]["mean"], np.vstack([e.actions for e in train]).mean(0), atol=1e-6
    )
    # The saved statistics tell the loader which action dimension the model expects.
    reloaded = load_isaac_episodes(tmp_path / "data", expected_action_dim=len(loaded["action"]["mean"]))
    assert len(reloaded.episodes) == 5 and len(val) == 1
