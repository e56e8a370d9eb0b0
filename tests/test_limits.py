"""Hostile and careless inputs to the data loaders (issue 21): each is refused from its header, before
the memory it asks for is allocated, with a DataError naming the file; under on_error=skip the episode
is left out and the others load. Every case here failed (or allocated gigabytes) before vla.data.limits."""

from __future__ import annotations

import json
import pickle
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_factories import make_demo, make_isaac_dataset, write_pickle
from PIL import Image

from vla.data.episodes import DataError
from vla.data.isaac import load_isaac_episodes
from vla.data.limits import (
    MAX_INSTRUCTION_CHARS,
    MAX_JSON_DEPTH,
    image_to_rgb8,
    json_depth,
    read_image,
)
from vla.data.pickle_demos import load_pickle_demos
from vla.data.safe_pickle import safe_load_pickle


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- pickles ---------------------------------------------------------------------------------------

# 33 bytes: bytearray(2,000,000,000) through the allowlisted builtins.bytearray.
BYTEARRAY_BOMB = b"\x80\x04c__builtin__\nbytearray\nJ\x00\x94\x35\x77\x85R."


def test_pickle_allocation_bomb_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(BYTEARRAY_BOMB)
    before = peak_rss_mb()
    with pytest.raises(DataError, match=r"bomb\.pkl.*2,000,000,000 bytes"):
        safe_load_pickle(path)
    assert peak_rss_mb() - before < 200  # the old loader allocated 2 GB here


def test_pickle_ndarray_shape_bomb_is_refused(tmp_path):
    # numpy.ndarray((50000, 50000)) called directly: 2.5 G elements from a few bytes.
    payload = b"\x80\x04cnumpy\nndarray\nM\x50\xc3M\x50\xc3\x86\x85R."
    path = tmp_path / "shape.pkl"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="ndarray"):
        safe_load_pickle(path)


def test_pickle_length_prefix_past_the_end_is_refused(tmp_path):
    # BINBYTES8 declaring 2**40 bytes in a 20-byte file.
    path = tmp_path / "forged.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc.")
    with pytest.raises(DataError, match=r"forged\.pkl.*length prefix"):
        safe_load_pickle(path)


def test_deeply_nested_pickle_is_a_data_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b".")
    with pytest.raises(DataError, match=r"deep\.pkl.*nests more than"):
        safe_load_pickle(path)


def test_deep_pickle_and_bomb_files_are_skipped_under_on_error_skip(tmp_path):
    folder = tmp_path / "demos"
    write_pickle(folder / "a_good.pkl", [make_demo(6, seed=0), make_demo(6, seed=1)])
    (folder / "b_bomb.pkl").write_bytes(BYTEARRAY_BOMB)
    nested: list = []
    for _ in range(300):  # past MAX_PICKLE_DEPTH (200); pickle.dumps itself recurses, so not 200,000
        nested = [nested]
    write_pickle(folder / "c_deep.pkl", [{**make_demo(6, seed=2), "instruction": nested}])
    result = load_pickle_demos(folder, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["a_good.pkl#0", "a_good.pkl#1"]
    assert {s.episode_id for s in result.skipped} == {"b_bomb.pkl", "c_deep.pkl"}
    with pytest.raises(DataError, match="c_deep.pkl"):
        load_pickle_demos(folder / "c_deep.pkl")


def test_ordinary_demos_still_load_with_arrays_and_dtypes(tmp_path):
    demos = [make_demo(6, seed=i) for i in range(2)]
    for protocol in (2, 4, 5):
        write_pickle(tmp_path / f"p{protocol}.pkl", demos, protocol=protocol)
        loaded = safe_load_pickle(tmp_path / f"p{protocol}.pkl")
        np.testing.assert_array_equal(loaded[1]["frames"][3]["image"], demos[1]["frames"][3]["image"])


# -- instructions ----------------------------------------------------------------------------------


def test_overlong_and_empty_instructions_are_refused_and_skipped(tmp_path):
    path = tmp_path / "demos.pkl"
    long = "reach " * 10_000  # 60,000 characters: the old loader trained on it for minutes, at 7.6 GB
    write_pickle(
        path,
        [
            make_demo(6, seed=0),
            make_demo(6, seed=1, instruction=long),
            make_demo(6, seed=2, instruction="  "),
        ],
    )
    with pytest.raises(
        DataError, match=rf"demos\.pkl#1.*60,000 characters; at most {MAX_INSTRUCTION_CHARS:,}"
    ):
        load_pickle_demos(path)
    result = load_pickle_demos(path, on_error="skip")
    assert [e.episode_id for e in result.episodes] == ["demos.pkl#0"]
    assert [s.episode_id for s in result.skipped] == ["demos.pkl#1", "demos.pkl#2"]


def test_isaac_overlong_instruction_skips_the_episode(tmp_path):
    episodes = make_isaac_dataset(tmp_path, n_episodes=3, steps=4)
    meta = json.loads((episodes[1] / "metadata.json").read_text())
    meta["instructions"] = ["x" * (MAX_INSTRUCTION_CHARS + 1)]
    (episodes[1] / "metadata.json").write_text(json.dumps(meta))
    result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [s.episode_id for s in result.skipped] == ["episode_001"]
    assert "characters" in result.skipped[0].reason


# -- JSON ------------------------------------------------------------------------------------------


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[[{{"}]}') == 3
    assert json_depth(b'"\\"[["') == 0


def test_deep_metadata_json_is_a_data_error_and_skipped(tmp_path):
    episodes = make_isaac_dataset(tmp_path, n_episodes=3, steps=4)
    (episodes[2] / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(
        DataError, match=rf"episode_002.*metadata\.json nests 100000 levels deep; at most {MAX_JSON_DEPTH}"
    ):
        load_isaac_episodes(tmp_path)
    result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [s.episode_id for s in result.skipped] == ["episode_002"] and len(result.episodes) == 2


# -- npz -------------------------------------------------------------------------------------------


def write_npz_bomb(path: Path, rows: int) -> None:
    """An npz whose `actions` member declares `rows` x 1 float64 and holds that many zeros, deflated
    (a 2.5 GB array compresses to a few MB; here the header is what matters)."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (rows, 1)}
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("actions.npy", "w", force_zip64=True) as handle,
    ):
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(bytes(1 << 20))  # the rest never needs to be read


def test_npz_declaring_gigabytes_is_refused_from_its_header(tmp_path):
    episodes = make_isaac_dataset(tmp_path, n_episodes=2, steps=4)
    write_npz_bomb(episodes[0] / "episode_data.npz", rows=312_500_000)  # 2.5 GB of float64
    before = peak_rss_mb()
    with pytest.raises(DataError, match=r"episode_000.*\['actions'\] declares shape \(312500000, 1\)"):
        load_isaac_episodes(tmp_path)
    assert peak_rss_mb() - before < 200
    result = load_isaac_episodes(tmp_path, on_error="skip")
    assert [s.episode_id for s in result.skipped] == ["episode_000"]


def test_npz_with_object_arrays_is_refused(tmp_path):
    episodes = make_isaac_dataset(tmp_path, n_episodes=1, steps=4)
    np.savez(episodes[0] / "episode_data.npz", actions=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_isaac_episodes(tmp_path)


# -- images ----------------------------------------------------------------------------------------


def test_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    """A 1-bit PNG of 13000 x 13000 is a few KB on disk and 500 MB as RGB."""
    episodes = make_isaac_dataset(tmp_path, n_episodes=2, steps=4)
    frame = sorted((episodes[1] / "images").iterdir())[0]
    Image.new("1", (13_000, 13_000)).save(frame)
    with pytest.raises(DataError, match=r"episode_001.*13000 x 13000 pixels; at most"):
        load_isaac_episodes(tmp_path)
    with pytest.raises(DataError, match="13000 x 13000"):
        read_image(frame)


def test_truncated_png_is_an_error_not_zero_filled(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="cut.png"):
        read_image(path)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    """Pillow's convert('RGB') clips 16-bit values at 255: a dim 16-bit frame came out all white."""
    values = np.array([[0, 257, 32896], [65535, 1000, 12850]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    rgb = read_image(path)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 2], expected)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "L"])
def test_image_modes_become_the_same_rgb(mode):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2] = (200, 30, 10)
    rgb[:, 2:] = (10, 30, 200)
    image = Image.fromarray(rgb)
    if mode == "L":
        rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
    elif mode == "LA":
        grey = np.asarray(image.convert("L"))
        rgb = np.repeat(grey[..., None], 3, axis=2)
    converted = image.convert(mode) if mode != "P" else image.quantize(4)
    if mode in ("RGBA", "LA"):
        converted.putalpha(0)  # transparent: the colour is kept, not composited
    np.testing.assert_array_equal(image_to_rgb8(converted, "frame"), rgb)


def test_unsupported_image_mode_is_named():
    with pytest.raises(DataError, match="mode 'I;16B'|mode"):
        image_to_rgb8(Image.new("CMYK", (2, 2)).convert("RGB").convert("HSV"), "frame")


def test_pickle_refuses_image_allocation_by_dtype(tmp_path):
    # numpy.dtype(('V', 2**40)) then _reconstruct(ndarray, (1,), that dtype) would allocate 1 TB.
    raw = pickle.dumps(np.dtype("V8"), protocol=4).replace(b"V8", b"V9999999999")
    path = tmp_path / "dtype.pkl"
    path.write_bytes(raw)
    with pytest.raises(DataError, match="dtype|bytes"):
        safe_load_pickle(path)
