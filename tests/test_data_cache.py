"""The memory-mapped frame cache: same pixels as decoding, rebuilt when sources or settings change."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import PIL
import pytest
from data_factories import make_isaac_dataset, make_pickle_demos
from PIL import Image

from vla.data import cache as cache_module
from vla.data.cache import build_frame_cache, entry_name
from vla.data.episodes import Episode
from vla.data.isaac import load_isaac_episodes
from vla.data.pickle_demos import load_pickle_demos
from vla.model.processing import ImageTransform

SIZE = 28


def transform(size: int = SIZE) -> ImageTransform:
    return ImageTransform(size=size, means=[(0.5, 0.5, 0.5)], stds=[(0.5, 0.5, 0.5)])


@pytest.fixture
def episodes(tmp_path) -> list[Episode]:
    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=4)
    return load_isaac_episodes(tmp_path / "data").episodes


def build(episodes, cache_dir: Path, size: int = SIZE):
    return build_frame_cache(episodes, transform(size).resize, size, cache_dir, progress=False)


def entry_files(cache_dir: Path, episode: Episode) -> tuple[Path, Path]:
    name = entry_name(episode)
    return cache_dir / "frames" / f"{name}.npy", cache_dir / "frames" / f"{name}.json"


def decoded(episode: Episode, t: int, size: int = SIZE) -> np.ndarray:
    """Frame t decoded from its file and resized the way the model's processor does (bicubic PIL)."""
    with Image.open(episode.frame_paths[t]) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def test_cache_returns_the_decoded_resized_frames(episodes, tmp_path):
    frames = build(episodes, tmp_path / "cache")
    for e, episode in enumerate(episodes):
        assert isinstance(frames[e], np.memmap) and frames[e].dtype == np.uint8
        assert frames[e].shape == (episode.num_steps, SIZE, SIZE, 3)
        for t in range(episode.num_steps):
            np.testing.assert_array_equal(frames[e][t], decoded(episode, t))


def test_a_valid_cache_is_reused_without_decoding(episodes, tmp_path, monkeypatch):
    build(episodes, tmp_path / "cache")
    before = [entry_files(tmp_path / "cache", ep)[0].stat().st_mtime_ns for ep in episodes]

    def no_decoding(self, t):
        raise AssertionError("a valid cache entry was decoded again")

    monkeypatch.setattr(Episode, "frame", no_decoding)
    frames = build(episodes, tmp_path / "cache")
    np.testing.assert_array_equal(frames[0][1], decoded(episodes[0], 1))
    assert [entry_files(tmp_path / "cache", ep)[0].stat().st_mtime_ns for ep in episodes] == before


def rewrite_frame(path: Path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE + 4, SIZE + 4, 3), dtype=np.uint8)
    old = path.stat()
    Image.fromarray(pixels).save(path)
    # A real edit happens later than the original write; make sure the timestamp says so even on a
    # file system with coarse timestamps.
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    return pixels


def test_a_changed_source_frame_rebuilds_its_episode_only(episodes, tmp_path):
    build(episodes, tmp_path / "cache")
    untouched = entry_files(tmp_path / "cache", episodes[0])[0].stat().st_mtime_ns
    new_pixels = rewrite_frame(episodes[1].frame_paths[2], seed=99)
    frames = build(episodes, tmp_path / "cache")
    expected = np.asarray(Image.fromarray(new_pixels).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(frames[1][2], expected)
    assert entry_files(tmp_path / "cache", episodes[0])[0].stat().st_mtime_ns == untouched


def test_changed_preprocessing_settings_rebuild(episodes, tmp_path, monkeypatch):
    build(episodes, tmp_path / "cache")
    frames = build(episodes, tmp_path / "cache", size=32)  # another model input size
    assert frames[0].shape == (episodes[0].num_steps, 32, 32, 3)
    np.testing.assert_array_equal(frames[0][3], decoded(episodes[0], 3, size=32))
    _, index_path = entry_files(tmp_path / "cache", episodes[0])
    before = json.loads(index_path.read_text())["settings"]
    monkeypatch.setattr(PIL, "__version__", "0.0.0")  # resampling could differ in another Pillow
    build(episodes, tmp_path / "cache", size=32)
    after = json.loads(index_path.read_text())["settings"]
    assert before["pillow"] != after["pillow"] == "0.0.0" and after["image_size"] == 32


def test_interrupted_build_leaves_no_valid_looking_entry(episodes, tmp_path, monkeypatch):
    build(episodes, tmp_path / "cache")
    rewrite_frame(episodes[2].frame_paths[0], seed=5)  # episode 2 must be rebuilt
    real_save = np.save

    def interrupted(handle, array):
        real_save(handle, array[:1])  # part of the file is written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(episodes, tmp_path / "cache")
    monkeypatch.setattr(cache_module.np, "save", real_save)
    array_path, index_path = entry_files(tmp_path / "cache", episodes[2])
    assert not index_path.exists()  # the stale index went first: the old array is not trusted
    assert not list((tmp_path / "cache" / "frames").glob(".*.tmp"))  # no temporary leftovers
    frames = build(episodes, tmp_path / "cache")
    np.testing.assert_array_equal(frames[2][0], decoded(episodes[2], 0))


def test_an_entry_without_its_index_is_rebuilt(episodes, tmp_path):
    build(episodes, tmp_path / "cache")
    array_path, index_path = entry_files(tmp_path / "cache", episodes[0])
    index_path.unlink()
    np.save(array_path, np.zeros((episodes[0].num_steps, SIZE, SIZE, 3), np.uint8))  # garbage
    frames = build(episodes, tmp_path / "cache")
    np.testing.assert_array_equal(frames[0][0], decoded(episodes[0], 0))


def test_in_memory_episodes_are_resized_in_memory(tmp_path):
    make_pickle_demos(tmp_path / "demos.pkl", n_demos=2, n_frames=3)
    episodes = load_pickle_demos(tmp_path / "demos.pkl").episodes
    frames = build(episodes, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "frames").iterdir())  # nothing written to disk
    expected = np.asarray(
        Image.fromarray(episodes[1].frames[1]).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    )
    np.testing.assert_array_equal(frames[1][1], expected)


def test_cache_pickles_without_its_memory_maps(episodes, tmp_path):
    """DataLoader workers started with spawn get the paths and map the files themselves."""
    frames = build(episodes, tmp_path / "cache")
    frames[0][0]  # opens a map
    payload = pickle.dumps(frames)
    assert len(payload) < 4096  # paths, not pixels
    np.testing.assert_array_equal(pickle.loads(payload)[1][3], decoded(episodes[1], 3))
