"""Predict the action (chunk) for one image and instruction; the last stdout line is a JSON object.

python scripts/predict.py image=PNG instruction="reach the red ball with the left hand"   # latest run
python scripts/predict.py checkpoint=DIR image=PNG instruction="..." [backend=onnx] [quantization=nf4]
python scripts/predict.py image=PNG instruction="..." state=[0.1,0.0,...]   # the robot state, for a policy that
                                                                            # reads one (default: the data's mean)
checkpoint: a training run folder, an export folder or an OpenVLA-format folder (or hub id).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import PredictConfig, register_configs, to_object  # noqa: E402

register_configs()


def check_prompt_fits(policy, instruction: str) -> None:
    """The prompt's tokens, the image patches, the state token and the action tokens must fit the
    language model's positions (transformers only warns past them, then runs out of memory)."""
    from vla.data.limits import check_prompt_tokens
    from vla.model.layout import layout_from_config
    from vla.model.processing import build_prompt

    config = policy.model.config
    max_positions = config.text_config.get("max_position_embeddings")
    if not max_positions:
        return
    prompt = len(policy.model.processor.tokenizer(build_prompt(instruction))["input_ids"])
    patches = (config.image_size // config.towers[0].patch_size) ** 2
    info = policy.info
    layout = layout_from_config(config.extra)
    chunk = layout.chunk_placeholders or info.chunk_size * info.action_dim  # token heads: K*D tokens
    needed = prompt + patches + (1 if info.state_dim else 0) + info.grounding + chunk
    check_prompt_tokens(needed + 1, max_positions, "instruction=")


def run(cfg: PredictConfig) -> dict:
    from vla.data.limits import check_instruction, read_image
    from vla.inference import load_policy
    from vla.outputs import resolve_latest

    # Checked before the model loads: not empty, at most MAX_INSTRUCTION_CHARS characters.
    check_instruction(cfg.instruction, "instruction=")
    image_path = Path(cfg.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image={cfg.image}: file not found")
    # Pixel count from the header before decoding; 16-bit, palette and alpha images converted to RGB.
    image = read_image(image_path, f"image={cfg.image}")
    checkpoint = resolve_latest(cfg.checkpoint, "checkpoint", cfg.paths.output_dir, "train")
    policy = load_policy(
        checkpoint,
        cfg.backend,
        unnorm_key=cfg.unnorm_key,
        dtype=cfg.dtype,
        quantization=cfg.quantization.method,
    )
    check_prompt_fits(policy, cfg.instruction)
    state = {}
    if policy.info.state_dim:
        values = cfg.state
        if values is None:  # a demo without a robot: the training data's mean state, said so
            values = policy.model.norm_stats[policy.info.dataset_key]["proprio"]["mean"]
            print(
                f"state: not given; using the training data's mean state ({policy.info.state_dim} values). "
                "Pass the robot's own as state=[...]",
                file=sys.stderr,
            )
        state["proprio"] = [list(values)]
    elif cfg.state is not None:
        raise ValueError(
            f"state=: {checkpoint} was not trained with a robot state (model.proprio); leave it out"
        )
    pred = policy.model.predict(
        [image], [cfg.instruction], unnorm_key=cfg.unnorm_key, constrain=cfg.constrain, **state
    )
    # The model's own shapes: [D] for a single-step token model (as OpenVLA), else the chunk [K, D].
    result = {"action": pred.actions[0].tolist(), "normalized_action": pred.normalized[0].tolist()}
    if pred.token_ids is not None:
        result["action_token_ids"] = pred.token_ids[0].tolist()
    result.update(input_ids=pred.prompt_ids[0], generate_input_ids=pred.input_ids[0])
    if policy.info.grounding:  # what a model trained with grounding tokens wrote before the action
        result["grounding"] = pred.grounding[0].tolist()
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        result = run(to_object(cfg, PredictConfig))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
