"""Training-image augmentation with albumentations, built from the `augment` config group.

`openvla` matches OpenVLA's training augmentation (prismatic/vla/datasets/rlds: `image_aug_kwargs`):
a random resized crop of area 0.9 and ratio 1, then additive brightness 0.2, contrast and saturation
0.8-1.2 and hue 0.05, in that fixed order. Frames arrive uint8 at the model's input size (after
OpenVLA's resize) and leave uint8 in the same shape. Randomness comes only from the seed given per call,
so a sample's augmentation depends on (seed, epoch, index) and nothing else: workers, batch order and
exact resume all see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np

from vla.config import AugmentConfig

# ColorJitter's identity: each property is switched on one at a time.
NEUTRAL_JITTER = {
    "brightness": (1.0, 1.0),
    "contrast": (1.0, 1.0),
    "saturation": (1.0, 1.0),
    "hue": (0.0, 0.0),
}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch, independent of which process draws it."""
    entropy = [seed % 2**32, epoch % 2**32, index % 2**32]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def build_pipeline(cfg: AugmentConfig, size: int) -> A.Compose | None:
    """The albumentations pipeline `cfg` describes for square `size` frames; None when it does nothing."""
    ops: list[A.BasicTransform] = []
    if cfg.crop_scale < 1.0:
        scale, ratio = (cfg.crop_scale, cfg.crop_scale), (cfg.crop_ratio, cfg.crop_ratio)
        ops.append(A.RandomResizedCrop(size=(size, size), scale=scale, ratio=ratio, p=1.0))
    if cfg.brightness > 0 and cfg.brightness_p > 0:
        # tf.image.random_brightness (OpenVLA) adds a delta; brightness_by_max makes it a fraction of 255.
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness,
                contrast_limit=0.0,
                brightness_by_max=True,
                p=cfg.brightness_p,
            )
        )
    # ColorJitter's contrast blends with the mean grey, as tf.image.random_contrast does; one
    # ColorJitter per property keeps OpenVLA's fixed order (a single one shuffles its operations).
    jitters = (
        ("contrast", tuple(cfg.contrast), cfg.contrast_p, (1.0, 1.0)),
        ("saturation", tuple(cfg.saturation), cfg.saturation_p, (1.0, 1.0)),
        ("hue", (-cfg.hue, cfg.hue), cfg.hue_p, (0.0, 0.0)),
    )
    for name, value, p, identity in jitters:
        if value != identity and p > 0:
            ops.append(A.ColorJitter(**{**NEUTRAL_JITTER, name: value}, p=p))
    if cfg.blur_p > 0:
        ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=tuple(cfg.blur_sigma), p=cfg.blur_p))
    if cfg.noise_p > 0:
        ops.append(A.GaussNoise(std_range=tuple(cfg.noise_std), p=cfg.noise_p))
    return A.Compose(ops) if ops else None


class FrameAugment:
    """Augments the frames of one sample with shared random parameters, seeded per call."""

    def __init__(self, pipeline: A.Compose, size: int):
        self.pipeline = pipeline
        self.size = size

    def __call__(self, frames: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
        """Every frame gets the same crop and colour change (albumentations' `images` target), so the
        frames of an action chunk stay consistent with each other. uint8 [size, size, 3] in and out."""
        for frame in frames:
            if frame.dtype != np.uint8 or frame.shape != (self.size, self.size, 3):
                raise ValueError(
                    f"augmentation expects uint8 [{self.size}, {self.size}, 3] frames, got {frame.dtype} {frame.shape}"
                )
        self.pipeline.set_random_seed(seed)
        return list(self.pipeline(images=np.stack(frames))["images"])


def make_augment(cfg: AugmentConfig, size: int) -> FrameAugment | None:
    """The training augmentation for `size`-pixel frames, or None for `augment=none`."""
    pipeline = build_pipeline(cfg, size)
    return FrameAugment(pipeline, size) if pipeline is not None else None
