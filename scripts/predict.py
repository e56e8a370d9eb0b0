"""Predict one action with an OpenVLA-format checkpoint; the last stdout line is a JSON object.

python scripts/predict.py checkpoint=DIR image=PNG instruction="pick up the red block"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.config import PredictConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: PredictConfig) -> dict:
    from PIL import Image

    from vla.model.modeling import OpenVLA

    image_path = Path(cfg.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image={cfg.image}: file not found")
    try:
        image = Image.open(image_path).convert("RGB")
    except OSError as err:
        raise ValueError(f"image={cfg.image}: cannot read the image ({err})") from None
    model = OpenVLA.from_pretrained(cfg.checkpoint, dtype=cfg.dtype, quantization=cfg.quantization)
    pred = model.predict([image], [cfg.instruction], unnorm_key=cfg.unnorm_key, constrain=cfg.constrain)
    result = {
        "action": pred.actions[0].tolist(),
        "normalized_action": pred.normalized[0].tolist(),
        "action_token_ids": pred.token_ids[0].tolist(),
        "input_ids": pred.prompt_ids[0],
        "generate_input_ids": pred.input_ids[0],
    }
    if model.grounding_tokens:  # what a model trained with data.grounding wrote before the action
        result["grounding"] = pred.grounding[0].tolist()
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    result = run(to_object(cfg, PredictConfig))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
