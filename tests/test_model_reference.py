"""The native model against what OpenVLA's own code produced on the tiny reference checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vla.model.configuration import OpenVLAConfig
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt


@pytest.fixture(scope="module", params=[0, 1], ids=["case0", "case1"])
def case(request, ref_cases, ref_dir, ref_model):
    c = ref_cases[request.param]
    image = Image.open(ref_dir / c["image_file"]).convert("RGB")
    inputs = ref_model.processor([image], [build_prompt(c["instruction"])])
    return c, inputs


def test_prompt_and_input_ids(case):
    c, inputs = case
    assert build_prompt(c["instruction"]) == c["prompt"]
    assert inputs["input_ids"][0].tolist() == c["processor_output"]["input_ids"]


def test_pixel_values_bit_exact(case):
    c, inputs = case
    ref = c["processor_output"]["pixel_values"]
    pv = inputs["pixel_values"]
    assert list(pv.shape) == ref["shape"] and pv.dtype == torch.float32
    digest = hashlib.sha256(pv.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == ref["sha256_float32_le_c_order"]
    flat = pv.flatten().numpy()
    np.testing.assert_allclose(flat[ref["sample_flat_indices"]], ref["sample_values"], atol=1e-6)


def test_predict_action_matches_openvla(case, ref_model):
    c, inputs = case
    ref = c["predict_action"]
    pred = ref_model.predict_action(**inputs, unnorm_key=ref["unnorm_key"], constrain=False)
    assert pred.input_ids[0] == ref["generate_input_ids"]
    assert pred.token_ids[0].tolist() == ref["action_token_ids"]
    bins = ref_model.action_tokenizer.bin_indices(pred.token_ids[0])
    assert bins.tolist() == ref["discretized_bin_indices"]
    np.testing.assert_allclose(pred.normalized[0], ref["normalized_actions"], atol=1e-5)
    np.testing.assert_allclose(pred.actions[0], ref["unnormalized_action"], atol=1e-5)


def test_teacher_forced_logits(case, ref_model):
    c, inputs = case
    ref = c["teacher_forced_forward"]
    ids = torch.tensor([ref["input_ids"]])
    with torch.no_grad():
        logits = ref_model(ids, inputs["pixel_values"], attention_mask=torch.ones_like(ids)).logits.double()
    assert list(logits.shape) == ref["logits_shape"]
    np.testing.assert_allclose(logits[0, -1, :10].numpy(), ref["last_position_first10"], atol=1e-4)
    assert abs(float(logits.sum()) - ref["logits_sum"]) < 1e-4 * logits.numel() ** 0.5
    assert abs(float(logits.abs().sum()) / ref["logits_abs_sum"] - 1) < 1e-6
    for step in ref["action_prediction_steps"]:
        row = logits[0, step["position"]]
        np.testing.assert_allclose(row[step["top5_ids"]].numpy(), step["top5_logits"], atol=1e-4)
        assert int(row.argmax()) == step["target_token"]


def test_intermediate_activations(case, ref_model):
    c, inputs = case
    pv = inputs["pixel_values"]
    with torch.no_grad():
        dino = ref_model.vision_backbone.featurizer(pv[:, :3])
        siglip = ref_model.vision_backbone.fused_featurizer(pv[:, 3:])
        fused = ref_model.vision_backbone(pv)
        projected = ref_model.project_image(pv)
    found = {"dino": dino, "siglip": siglip, "vision_backbone_output": fused, "projector_features": projected}
    for key, ref in c["intermediates"].items():
        name = next((n for n in found if key.startswith(n)), None)
        if name is None:
            continue
        t = found[name]
        assert list(t.shape) == ref["shape"], key
        flat = t.flatten().numpy()
        np.testing.assert_allclose(flat[:10], ref["first10"], atol=1e-4, err_msg=key)
        np.testing.assert_allclose(flat[ref["sample_flat_indices"]], ref["sample_values"], atol=1e-4)
        assert abs(float(t.double().sum()) - ref["sum"]) <= 1e-5 * ref["abs_sum"], key


def test_7b_state_dict_matches_manifest(ref_dir):
    config = OpenVLAConfig.from_json_file(ref_dir / "openvla7b_config_full.json")
    with torch.device("meta"):
        model = OpenVLA(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    manifest = json.loads((ref_dir / "openvla7b_param_manifest.json").read_text())
    theirs = {p["key"]: p["shape"] for p in manifest["params"]}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert ours == theirs
    assert sum(int(np.prod(s)) for s in ours.values()) == manifest["total_parameters"]


def test_batch_and_cache_agree_with_single_uncached(ref_model, ref_dir):
    """Batches with prompts of different lengths and the KV cache change nothing."""
    images = [Image.open(ref_dir / f"images/case{i}.png").convert("RGB") for i in (0, 1, 0)]
    instructions = ["pick up the red block", "put the spoon on the towel", "wave"]
    singles = []
    for image, text in zip(images, instructions):
        inputs = ref_model.processor([image], [build_prompt(text)])
        singles.append(ref_model.predict_action(**inputs, constrain=False, use_cache=False).token_ids[0])
    batch = ref_model.predict(images, instructions, constrain=False)
    np.testing.assert_array_equal(batch.token_ids, np.stack(singles))
