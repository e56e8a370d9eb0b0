"""The embedded tiny model: OpenVLA's architecture and checkpoint format at CPU size."""

from __future__ import annotations

import numpy as np
import torch

from vla.modeling import OpenVLA
from vla.tiny import TinyArchitecture, build_tiny_model


def stats(dim: int) -> dict:
    action = {"q01": [-1.0] * dim, "q99": [1.0] * dim, "mask": [True] * dim}
    action.update({k: [0.0] * dim for k in ("mean", "std", "min", "max")})
    return {"athena": {"action": action, "num_transitions": 1, "num_trajectories": 1}}


def test_tiny_model_is_openvla_shaped_and_round_trips(tmp_path):
    model = build_tiny_model(TinyArchitecture(image_size=56), norm_stats=stats(23), seed=1)
    names = set(model.state_dict())
    for key in (
        "vision_backbone.featurizer.reg_token",
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor",
        "vision_backbone.fused_featurizer.attn_pool.latent",
        "projector.fc3.weight",
        "language_model.lm_head.weight",
    ):
        assert key in names
    # Action tokens are the last 256 ids of the unpadded vocabulary, and the tokenizer agrees.
    tok = model.action_tokenizer
    assert tok.vocab_size == model.processor.tokenizer.pad_token_id
    assert model.language_model.config.vocab_size % 64 == 0
    image = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    pred = model.predict(
        [image, image], ["reach the red ball with the left hand", "lift the left knee"], constrain=True
    )
    assert pred.actions.shape == (2, 23)
    assert ((pred.token_ids >= tok.first_action_token) & (pred.token_ids <= tok.last_action_token)).all()
    loaded = OpenVLA.from_pretrained(model.save_pretrained(tmp_path / "tiny"))
    again = loaded.predict(
        [image, image], ["reach the red ball with the left hand", "lift the left knee"], constrain=True
    )
    np.testing.assert_array_equal(pred.token_ids, again.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_same_seed_same_model():
    a = build_tiny_model(TinyArchitecture(image_size=28), seed=3).state_dict()
    b = build_tiny_model(TinyArchitecture(image_size=28), seed=3).state_dict()
    c = build_tiny_model(TinyArchitecture(image_size=28), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projector.fc1.weight"], c["projector.fc1.weight"])


def test_single_tower_variant_and_unknown_tower_id():
    """OpenVLA's non-fused backbones: one tower on 3 channels and the 2-layer gelu-mlp projector."""
    import pytest

    from vla.configuration import CheckpointError, OpenVLAConfig
    from vla.tiny import DINO_ID, tiny_config

    fused = tiny_config(TinyArchitecture(image_size=28), vocab_size=1024)
    raw = fused.to_dict()
    raw["use_fused_vision_backbone"] = False
    raw["timm_model_ids"] = [DINO_ID]
    single = OpenVLA(OpenVLAConfig.from_dict(raw))
    assert single.vision_backbone.fused_featurizer is None
    assert not hasattr(single.projector, "fc3")
    assert single.projector.fc1.in_features == single.vision_backbone.featurizer.embed_dim
    pixels = torch.zeros(2, 3, 28, 28)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    assert single(ids, pixels).logits.shape == (2, 3 + 4, 1088)  # 4 patches spliced after <s>
    raw["timm_model_ids"] = ["vit_giant_unknown"]
    with pytest.raises(CheckpointError, match="unknown vision tower 'vit_giant_unknown'"):
        OpenVLA(OpenVLAConfig.from_dict(raw))
    raw["timm_model_ids"] = [DINO_ID, DINO_ID]
    with pytest.raises(CheckpointError, match="needs 1"):
        OpenVLAConfig.from_dict(raw)
