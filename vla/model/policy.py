"""A trained policy as one callable object: image(s) + instruction(s) (+ robot state) -> action chunks.

`Policy` wraps any model with OpenVLA's `predict(images, instructions, unnorm_key=)`: the torch
`OpenVLA`, the onnxruntime `OnnxPolicy`; `PolicyInfo` says what it expects and returns. Loading one
from a folder is `vla.inference.load_policy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.model.action_tokenizer import action_stats
from vla.model.layout import ActionPrediction, layout_from_config
from vla.model.processing import ImageLike


@dataclass
class PolicyInfo:
    """What a client needs to know about a policy before it sends an observation."""

    source: str  # the folder (or hub id) it was loaded from
    backend: str  # one of BACKENDS
    kind: str  # export | run | openvla
    action_dim: int  # D (of the statistics key in use)
    chunk_size: int  # K actions per query
    grounding: int  # G grounding values written before the actions
    image_size: int  # square input size of the vision towers (any image is resized to it)
    dataset_key: str  # the statistics key actions are unnormalized with
    control_hz: float | None  # actions per second of the training data, where the run records it
    state_dim: int = 0  # robot-state inputs the policy takes (0: none)


class Policy:
    """image(s) + instruction(s) (+ robot state, for policies trained with it) -> action chunks.

    Wraps a model with OpenVLA's `predict(images, instructions, unnorm_key=)` (the torch `OpenVLA` or the
    onnxruntime `OnnxPolicy`); `info` says what it expects and returns."""

    def __init__(self, model: Any, info: PolicyInfo):
        self.model = model
        self.info = info

    def predict(
        self,
        images: Sequence[ImageLike],
        instructions: Sequence[str],
        state: np.ndarray | None = None,
        unnorm_key: str | None = None,
    ) -> ActionPrediction:
        """A batch: one image (PIL or HxWx3 uint8), one instruction and, for a policy trained with a
        robot state (`info.state_dim` > 0), one state per row ([B, S] in robot units). `actions` and
        `normalized` are [B, K, D] (K = 1 for single-step policies), in robot units."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images for {len(instructions)} instructions: give one per row")
        kwargs = {}
        if self.info.state_dim:
            if state is None:
                raise ValueError(
                    f"{self.info.source}: this policy reads the robot state: pass state [B, {self.info.state_dim}]"
                )
            kwargs["proprio"] = state
        elif state is not None:
            raise ValueError(
                f"{self.info.source}: this policy was not trained with a robot state; pass state=None"
            )
        pred = self.model.predict(
            images, instructions, unnorm_key=unnorm_key or self.info.dataset_key, **kwargs
        )
        shape = (len(images), self.info.chunk_size, -1)
        pred.actions, pred.normalized = pred.actions.reshape(shape), pred.normalized.reshape(shape)
        if pred.token_ids is not None:
            pred.token_ids = pred.token_ids.reshape(shape)
        return pred

    def act(self, image: ImageLike, instruction: str, state: np.ndarray | None = None) -> np.ndarray:
        """One observation -> the action chunk [K, D] in robot units (K = 1 for single-step policies)."""
        return self.predict(
            [image], [instruction], None if state is None else np.asarray(state)[None]
        ).actions[0]

    def __call__(
        self, images: Sequence[ImageLike], instructions: Sequence[str], states: np.ndarray | None = None
    ) -> np.ndarray:
        """Actions only, [B, K, D] (what `vla.sim.evaluate.evaluate_policy` calls; it passes the robot
        states, which a policy without a state input leaves unused)."""
        return self.predict(images, instructions, states if self.info.state_dim else None).actions


def policy_info(
    model: Any, source: str, backend: str, kind: str, unnorm_key: str | None = None, hz: float | None = None
) -> PolicyInfo:
    """What `model` (an OpenVLA or OnnxPolicy) expects and returns: its layout, statistics and input size."""
    key, stats = action_stats(model.norm_stats, unnorm_key)
    layout = layout_from_config(model.config.extra, f"{source}/config.json")
    return PolicyInfo(
        source=source,
        backend=backend,
        kind=kind,
        action_dim=len(stats["q01"]),
        chunk_size=layout.chunk_size,
        grounding=layout.grounding,
        image_size=model.config.image_size,
        dataset_key=key,
        control_hz=hz,
        state_dim=layout.proprio_dim,
    )
