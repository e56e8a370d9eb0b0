"""Saving and loading in OpenVLA's folder format, quantized loading, and the errors users meet."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from vla.model.action_tokenizer import StatisticsError
from vla.model.configuration import CheckpointError
from vla.model.modeling import OpenVLA


@pytest.fixture(scope="module")
def images(ref_dir):
    return [Image.open(ref_dir / f"images/case{i}.png").convert("RGB") for i in (0, 1)]


INSTRUCTIONS = ["pick up the red block", "put the spoon on the towel"]


@pytest.fixture()
def ckpt_copy(ref_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(ref_dir / "tiny_ckpt", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_save_load_round_trip_is_exact(ref_model, images, tmp_path):
    folder = ref_model.save_pretrained(tmp_path / "out", max_shard_size="5MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", "dataset_statistics.json"):
        assert (folder / name).is_file(), name
    loaded = OpenVLA.from_pretrained(folder)
    before, after = ref_model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    a = ref_model.predict(images, INSTRUCTIONS, constrain=False)
    b = loaded.predict(images, INSTRUCTIONS, constrain=False)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.actions, b.actions)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_round_trip(ref_model, images, tmp_path, dtype):
    first = OpenVLA.from_pretrained(ref_model.save_pretrained(tmp_path / "a", dtype=dtype))
    assert all(p.dtype == getattr(torch, dtype) for p in first.parameters())
    second = OpenVLA.from_pretrained(first.save_pretrained(tmp_path / "b"))
    sd1, sd2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    preds = [m.predict(images, INSTRUCTIONS).token_ids for m in (first, second)]
    np.testing.assert_array_equal(*preds)


@pytest.mark.parametrize("method,layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_loading_on_cpu(ref_dir, images, method, layer):
    model = OpenVLA.from_pretrained(ref_dir / "tiny_ckpt", quantization=method)
    decoder = model.language_model.model
    linears = [m for m in decoder.modules() if type(m).__name__ == layer]
    assert len(linears) == 7 * len(decoder.layers)  # q k v o gate up down in every layer
    assert isinstance(model.language_model.lm_head, torch.nn.Linear)  # kept in full precision
    pred = model.predict(images, INSTRUCTIONS, constrain=True)
    tok = model.action_tokenizer
    assert pred.token_ids.shape == (2, 7)
    assert ((pred.token_ids >= tok.first_action_token) & (pred.token_ids <= tok.last_action_token)).all()
    with pytest.raises(CheckpointError, match="quantized"):
        model.save_pretrained(ref_dir / "never-written")


def test_23_dimensional_statistics(ckpt_copy, images):
    rng = np.random.default_rng(0)
    low = rng.uniform(-2, -0.5, 23)
    high = rng.uniform(0.5, 2, 23)
    mask = [True] * 22 + [False]
    action = {"q01": low.tolist(), "q99": high.tolist(), "mask": mask}
    action.update({k: [0.0] * 23 for k in ("mean", "std", "min", "max")})
    stats = {"athena": {"action": action, "num_transitions": 10, "num_trajectories": 1}}
    (ckpt_copy / "dataset_statistics.json").write_text(json.dumps(stats))
    model = OpenVLA.from_pretrained(ckpt_copy)
    pred = model.predict(images, INSTRUCTIONS)
    assert pred.token_ids.shape == (2, 23) and pred.actions.shape == (2, 23)
    expected = 0.5 * (pred.normalized + 1) * (high - low) + low
    np.testing.assert_allclose(pred.actions[:, :22], expected[:, :22])
    np.testing.assert_array_equal(pred.actions[:, 22], pred.normalized[:, 22])  # unmasked: as is


def test_unnorm_key_errors_list_the_keys(ckpt_copy, images):
    config = json.loads((ckpt_copy / "config.json").read_text())
    config["norm_stats"]["other_robot"] = copy.deepcopy(config["norm_stats"]["athena_sim"])
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    model = OpenVLA.from_pretrained(ckpt_copy)
    with pytest.raises(StatisticsError, match=r"pass unnorm_key, one of \['athena_sim', 'other_robot'\]"):
        model.predict(images, INSTRUCTIONS)
    with pytest.raises(StatisticsError, match=r"'nope' not found; available keys: \['athena_sim', 'other"):
        model.predict(images, INSTRUCTIONS, unnorm_key="nope")
    assert model.predict(images, INSTRUCTIONS, unnorm_key="other_robot").actions.shape == (2, 7)


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_files(ckpt_copy, missing):
    (ckpt_copy / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        OpenVLA.from_pretrained(ckpt_copy)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OpenVLA.from_pretrained(tmp_path / "nowhere")


def test_corrupt_safetensors(ckpt_copy):
    path = ckpt_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = r"model\.safetensors: not a complete safetensors file .*download the model again"
    with pytest.raises(CheckpointError, match=message):
        OpenVLA.from_pretrained(ckpt_copy)


def test_mismatched_state_dict_names_expected_and_found(ckpt_copy):
    from safetensors.torch import load_file, save_file

    path = ckpt_copy / "model.safetensors"
    state = load_file(str(path))
    state["projector.fc9.weight"] = state.pop("projector.fc3.weight")
    state["projector.fc1.bias"] = torch.zeros(7)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        OpenVLA.from_pretrained(ckpt_copy)
    message = str(err.value)
    assert "expected but not found: ['projector.fc3.weight']" in message
    assert "found but not expected: ['projector.fc9.weight']" in message
    assert "projector.fc1.bias: expected (320,), found (7,)" in message


def test_constrained_decoding_keeps_to_action_tokens(ref_model, images):
    """A non-action token that wins the argmax decodes silently to an extreme bin in OpenVLA;
    constrained decoding never emits it."""
    model = copy.deepcopy(ref_model)
    head = model.language_model.lm_head.weight
    with torch.no_grad():
        head[500] = head[31801] * 50  # token 500 now dominates wherever 31801 scores well
    free = model.predict(images[:1], INSTRUCTIONS[:1], constrain=False)
    assert 500 in free.token_ids[0]
    assert free.normalized[0][free.token_ids[0] == 500] == pytest.approx(
        ref_model.action_tokenizer.bin_centers[-1]
    )
    held = model.predict(images[:1], INSTRUCTIONS[:1], constrain=True)
    tok = model.action_tokenizer
    assert ((held.token_ids >= tok.first_action_token) & (held.token_ids <= tok.last_action_token)).all()


def test_end_of_sequence_stops_like_hf_generate(ref_model, images):
    """When `</s>` wins a greedy step, HF generate stops and OpenVLA's action ids are the last D ids of
    the whole sequence, prompt included."""
    model = copy.deepcopy(ref_model)
    first = ref_model.predict(images[:1], INSTRUCTIONS[:1], constrain=False).token_ids[0]
    head = model.language_model.lm_head.weight
    with torch.no_grad():
        head[2] = head[int(first[2])] * 50  # </s> now wins where that action token scored well
    pred = model.predict(images[:1], INSTRUCTIONS[:1], constrain=False)
    pixels = model.processor.pixel_values(images[:1])
    raw = model.generate_action_tokens(pred.input_ids, pixels, 7, constrain=False)[0].tolist()
    stop = raw.index(2)
    assert stop < 6
    assert pred.token_ids[0].tolist() == (pred.input_ids[0] + raw[: stop + 1])[-7:]
    assert model.predict(images[:1], INSTRUCTIONS[:1], constrain=True).token_ids.min() >= 31744


def test_predict_script_prints_json(ref_dir, ref_cases):
    case = ref_cases[0]
    cmd = [
        sys.executable,
        str(ROOT / "scripts/predict.py"),
        f"checkpoint={ref_dir / 'tiny_ckpt'}",
        f"image={ref_dir / case['image_file']}",
        f"instruction={case['instruction']}",
        "constrain=false",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["action_token_ids"] == case["predict_action"]["action_token_ids"]
    assert result["input_ids"] == case["processor_output"]["input_ids"]
    np.testing.assert_allclose(result["action"], case["predict_action"]["unnormalized_action"], atol=1e-5)
