"""Training augmentation (albumentations presets) and the matching centre crop at evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, compose_config
from vla.config import AugmentConfig, ConfigError, TrainConfig, to_object
from vla.data.augment import make_augment, sample_seed
from vla.data.dataset import VLADataset
from vla.data.episodes import Episode
from vla.model.processing import center_crop

SIZE = 28
RED, BLUE = (200, 30, 30), (20, 40, 220)


def preset(name: str) -> AugmentConfig:
    return compose_config("train", [f"augment={name}", "run_dir=/tmp/never-written"], TrainConfig).augment


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def bordered(size: int, inner: int) -> np.ndarray:
    """A red image with a blue `inner` x `inner` square in its centre."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = RED
    lo = (size - inner) // 2
    image[lo : lo + inner, lo : lo + inner] = BLUE
    return image


@pytest.fixture(scope="module")
def tiny():
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    return build_tiny_model(TinyArchitecture(image_size=SIZE))


def test_openvla_preset_holds_openvla_values():
    cfg = preset("openvla")
    values = (cfg.crop_scale, cfg.crop_ratio, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    assert values == (0.9, 1.0, 0.2, [0.8, 1.2], [0.8, 1.2], 0.05)
    names = [type(op).__name__ for op in make_augment(cfg, SIZE).pipeline.transforms]
    # OpenVLA's augment_order: crop, brightness, contrast, saturation, hue.
    assert names == [
        "RandomResizedCrop",
        "RandomBrightnessContrast",
        "ColorJitter",
        "ColorJitter",
        "ColorJitter",
    ]


def test_seed_preset_has_its_four_operations_with_probabilities():
    cfg = preset("seed")
    ops = make_augment(cfg, SIZE).pipeline.transforms
    names = [type(op).__name__ for op in ops]
    assert names == ["RandomBrightnessContrast", "ColorJitter", "GaussianBlur", "GaussNoise"]
    assert [op.p for op in ops] == [cfg.brightness_p, cfg.contrast_p, cfg.blur_p, cfg.noise_p]
    assert all(0 < op.p < 1 for op in ops) and cfg.crop_scale == 1.0


def test_none_preset_is_no_augmentation():
    assert make_augment(preset("none"), SIZE) is None


@pytest.mark.parametrize("name", ["openvla", "seed"])
def test_preset_is_deterministic_under_a_seed_and_keeps_uint8_and_shape(name):
    augment = make_augment(preset(name), SIZE)
    image = frame()
    before = image.copy()
    first = augment([image], seed=7)[0]
    assert first.dtype == np.uint8 and first.shape == image.shape
    np.testing.assert_array_equal(augment([image], seed=7)[0], first)
    # The seed preset applies each operation with probability < 1: some seeds must change the image.
    others = [augment([image], seed=s)[0] for s in range(8, 16)]
    assert any(not np.array_equal(o, first) for o in others)
    np.testing.assert_array_equal(image, before)  # the input (maybe a cache view) is not modified


def test_frames_of_a_sample_share_the_random_parameters():
    augment = make_augment(preset("openvla"), SIZE)
    a, b = frame(1), frame(2)
    together = augment([a, b], seed=3)
    np.testing.assert_array_equal(together[0], augment([a], seed=3)[0])
    np.testing.assert_array_equal(together[1], augment([b], seed=3)[0])


def test_sample_seed_depends_on_seed_epoch_and_index():
    seeds = {sample_seed(s, e, i) for s in (0, 1) for e in (0, 1) for i in (0, 1)}
    assert len(seeds) == 8
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)


def test_center_crop_takes_the_central_area():
    # Area 0.25 of a 28-px image is its central 14x14 square: exactly the blue part, scaled back up.
    cropped = center_crop(bordered(SIZE, 14), 0.25)
    assert cropped.shape == (SIZE, SIZE, 3) and cropped.dtype == np.uint8
    assert (cropped == BLUE).all()
    np.testing.assert_array_equal(center_crop(bordered(SIZE, 14), 1.0), bordered(SIZE, 14))


def episode_of(images: np.ndarray) -> Episode:
    steps = len(images)
    return Episode(
        episode_id="e0",
        source="pickle",
        path=ROOT,
        instruction="wave",
        instructions=["wave"],
        actions=np.zeros((steps, 23), np.float32),
        states=np.zeros((steps, 0), np.float32),
        frames=images,
    )


def stats23() -> dict:
    return {"q01": [-1.0] * 23, "q99": [1.0] * 23, "mask": [True] * 23}


def test_train_split_is_augmented_per_epoch_and_validation_only_centre_cropped(tiny):
    images = np.stack([frame(s) for s in range(3)])
    transform = tiny.processor.image_transform
    common = dict(processor=tiny.processor, action_tokenizer=tiny.action_tokenizer, action_stats=stats23())
    augment = make_augment(preset("openvla"), SIZE)
    train = VLADataset([episode_of(images)], **common, augment=augment, seed=0)
    val = VLADataset([episode_of(images)], **common)
    # Validation: the frame as it is (no crop configured on this model).
    np.testing.assert_array_equal(val[1]["images"].numpy(), images[1])
    # Train: augmented, the same for the same (epoch, index), different in another epoch.
    a = train[(0, 1)]["images"]
    assert a.dtype == torch.uint8 and a.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(a.numpy(), images[1])
    assert torch.equal(a, train[(0, 1)]["images"])
    assert not torch.equal(a, train[(1, 1)]["images"])
    try:
        transform.center_crop_scale = 0.25
        np.testing.assert_array_equal(val[1]["images"].numpy(), center_crop(images[1], 0.25))
    finally:
        transform.center_crop_scale = 1.0


def test_model_trained_with_crops_centre_crops_at_predict_time(tiny, tmp_path):
    from vla.config import ActionLayout
    from vla.model.modeling import OpenVLA

    tiny.set_layout(ActionLayout(center_crop_scale=0.25))
    try:
        tiny.config.norm_stats = {"athena": {"action": stats23()}}
        folder = tiny.save_pretrained(tmp_path / "model")
    finally:
        tiny.set_layout(ActionLayout(center_crop_scale=1.0))
    model = OpenVLA.from_pretrained(folder)
    assert model.processor.image_transform.center_crop_scale == 0.25
    # What the model sees of the bordered image is its blue centre, i.e. an all-blue image.
    border, blue = bordered(SIZE, 14), np.broadcast_to(np.array(BLUE, np.uint8), (SIZE, SIZE, 3)).copy()
    seen = model.processor([border, blue], ["wave", "wave"])["pixel_values"]
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    np.testing.assert_array_equal(
        model.predict([border], ["wave"]).token_ids, model.predict([blue], ["wave"]).token_ids
    )
    # The uncropped model tells the two apart (the test above would otherwise prove nothing).
    plain = tiny.processor([border, blue], ["wave", "wave"])["pixel_values"]
    assert not torch.equal(plain[0], plain[1])


@pytest.mark.parametrize(
    "override",
    ["augment.crop_scale=1.5", "augment.crop_scale=0", "augment.noise_p=2", "augment.contrast=[1.2,0.8]"],
)
def test_bad_augment_values_fail_at_start_up(override):
    cfg = compose_config("train", ["augment=openvla", override, "run_dir=/tmp/never-written"])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        to_object(cfg, TrainConfig)
