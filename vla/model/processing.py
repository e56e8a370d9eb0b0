"""OpenVLA's processor: prompt template, Llama tokenizer, and per-tower image preprocessing.

Image preprocessing is OpenVLA's "resize-naive": a bicubic PIL resize to the model's square input
size (PIL returns an unchanged copy when the size already matches), a centre crop when the model was
trained with random crops (config.json's `center_crop_scale`), `uint8 / 255` in float32, then
`(x - mean) / std` per tower; the fused backbone stacks the towers' 3 channels into 6.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from vla.model.configuration import CheckpointError, OpenVLAConfig
from vla.model.layout import layout_from_config
from vla.model.source_files import code_files, prune_auto_map, read_source_files, write_source_files

# OpenVLA (v0.2+) prompt; the caller lower-cases the instruction, as OpenVLA's scripts do.
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def build_prompt(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


ImageLike = Image.Image | np.ndarray


def to_pil_rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 uint8 image array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    return image.convert("RGB")


def center_crop(image: np.ndarray, scale: float) -> np.ndarray:
    """The centre crop covering `scale` of the image's area, resized back to the image's size (uint8).

    OpenVLA's `center_crop=True` at evaluation: a model trained on random crops of area `scale` (0.9)
    sees the same zoom at inference. Bilinear, as albumentations' RandomResizedCrop resizes (cv2).
    """
    if scale >= 1.0:
        return image
    import cv2

    h, w = image.shape[:2]
    ch, cw = round(h * math.sqrt(scale)), round(w * math.sqrt(scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class ImageTransform:
    """Resize (+ optional centre crop) + normalize for each tower; float32 [3 * n_towers, size, size].

    The steps are public so the training data can cache `resize`, augment the uint8 frame and then
    `to_tensor` it: `transform(image) == to_tensor(center_crop(resize(image)))`.
    """

    size: int
    means: list[tuple[float, float, float]]
    stds: list[tuple[float, float, float]]
    center_crop_scale: float = 1.0
    """Area of the centre crop applied after the resize (1.0: none); config.json's `center_crop_scale`,
    set when the model was trained with random-resized-crop augmentation."""

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.to_tensor(self.center_crop(self.resize(image)))

    def resize(self, image: ImageLike) -> np.ndarray:
        """uint8 [size, size, 3]: a bicubic PIL resize (OpenVLA's resize-naive)."""
        image = to_pil_rgb(image)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.array(image, dtype=np.uint8)

    def center_crop(self, image: np.ndarray) -> np.ndarray:
        return center_crop(image, self.center_crop_scale)

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 [size, size, 3] -> normalized float32 [3 * n_towers, size, size]."""
        # torch.tensor copies: the frame may be a read-only view of the memory-mapped image cache.
        return self.normalize_batch(torch.tensor(image, dtype=torch.uint8)[None])[0]

    def normalize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float32 [B, 3 * n_towers, H, W], on the images' device.

        Training batches carry uint8 frames and are normalized here, in the training step (on the
        GPU when there is one): 4x (one tower) to 8x (two towers) fewer bytes through the loader and
        to the device than normalized float pixels, and no per-sample arithmetic in the loader."""
        x = images.permute(0, 3, 1, 2).float().div(255)
        return torch.cat([self.normalize(x, i) for i in range(len(self.means))], dim=1)

    def normalize(self, x: torch.Tensor, tower: int) -> torch.Tensor:
        """[..., 3, H, W] in [0, 1] -> (x - mean) / std of `tower`."""
        mean = torch.tensor(self.means[tower], dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.stds[tower], dtype=torch.float32, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def preprocessor_config(self, fused: bool) -> dict:
        """OpenVLA's `preprocessor_config.json`, so OpenVLA's own processor can read our checkpoints."""
        n = len(self.means)
        size = [self.size, self.size]
        return {
            # (OpenVLA's auto_map names processing_prismatic.py: see OpenVLAProcessor.save_pretrained.)
            "auto_map": {
                "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                "AutoProcessor": "processing_prismatic.PrismaticProcessor",
            },
            "image_processor_type": "PrismaticImageProcessor",
            "image_resize_strategy": "resize-naive",
            "input_sizes": [[3, *size]] * n,
            "interpolations": ["bicubic"] * n,
            "means": [list(m) for m in self.means],
            "stds": [list(s) for s in self.stds],
            "processor_class": "PrismaticProcessor",
            "tvf_crop_params": [{"output_size": size}] * n,
            "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None,
            "tvf_normalize_params": [
                {"inplace": False, "mean": list(m), "std": list(s)} for m, s in zip(self.means, self.stds)
            ],
            "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": size}]
            * n,
            "use_fused_vision_backbone": fused,
        }

    @classmethod
    def from_config(cls, config: OpenVLAConfig, folder: Path | None = None) -> ImageTransform:
        """Means/stds from the folder's `preprocessor_config.json` when present, else the towers'."""
        towers = config.towers
        means = [t.image_mean for t in towers]
        stds = [t.image_std for t in towers]
        path = folder / "preprocessor_config.json" if folder is not None else None
        if path is not None and path.is_file():
            raw = json.loads(path.read_text())
            if "means" in raw and "stds" in raw:
                means = [tuple(m) for m in raw["means"]]
                stds = [tuple(s) for s in raw["stds"]]
            if len(means) != len(towers):
                raise CheckpointError(f"{path}: {len(means)} means for {len(towers)} vision towers")
        source = str(folder / "config.json") if folder is not None else "config.json"
        crop = layout_from_config(config.extra, source).center_crop_scale
        return cls(size=config.image_size, means=means, stds=stds, center_crop_scale=crop)


class OpenVLAProcessor:
    """Turns images and instructions into `input_ids`, `attention_mask` and `pixel_values`.

    `files`: the tokenizer, processor and remote-code files of the folder the tokenizer came from,
    saved with the model byte for byte (`vla.model.source_files`)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        image_transform: ImageTransform,
        files: dict[str, bytes] | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.files = dict(files or {})

    @property
    def empty_token_id(self) -> int:
        """The bare '▁' piece (29871 in Llama-2), which OpenVLA appends before decoding actions."""
        return int(self.tokenizer.convert_tokens_to_ids("\u2581"))

    def pixel_values(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return torch.stack([self.image_transform(img) for img in images])

    def __call__(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        enc = self.tokenizer(list(prompts), padding=True, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": self.pixel_values(images),
        }

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: OpenVLAConfig) -> OpenVLAProcessor:
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
            raise CheckpointError(f"{folder}: no tokenizer (tokenizer.json) in the checkpoint folder")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            raise CheckpointError(f"{folder}: the tokenizer defines no pad token")
        tokenizer.padding_side = "right"
        return cls(tokenizer, ImageTransform.from_config(config, folder), read_source_files(folder))

    def save_pretrained(self, folder: str | Path, fused: bool) -> None:
        """The source folder's files as they came; what it lacked is written: the tokenizer (by this
        transformers), OpenVLA's preprocessor_config.json and processor_config.json, whose auto_map
        is kept only when processing_prismatic.py travels with the folder."""
        folder = Path(folder)
        write_source_files(self.files, folder)
        if "tokenizer.json" not in self.files and "tokenizer.model" not in self.files:
            self.tokenizer.save_pretrained(str(folder))
        present = code_files(self.files)
        generated = {
            "preprocessor_config.json": self.image_transform.preprocessor_config(fused),
            "processor_config.json": {
                "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
                "processor_class": "PrismaticProcessor",
            },
        }
        for name, config in generated.items():
            if name not in self.files:
                prune_auto_map(config, present)
                (folder / name).write_text(json.dumps(config, indent=2) + "\n")
