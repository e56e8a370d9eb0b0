"""FiLM (model.film, OpenVLA-OFT+): the prompt's words scale and shift every vision block's features.

A new FiLM is the identity (a base model predicts as before), the instruction then changes the image
features, a training pass conditions on exactly what prediction conditions on, and the module is saved
under its own prefix, reloaded and trained by LoRA (test_l1_head) and exported to ONNX (test_export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_l1_head import IMAGES, TEXTS, perturb, statistics, tiny

from vla.data.dataset import VLADataset, collate
from vla.data.episodes import Episode
from vla.model.modeling import OpenVLA
from vla.model.processing import build_prompt


def perturb_film(model: OpenVLA) -> OpenVLA:
    """Give FiLM random weights (a new one is zero: the identity)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.film.parameters():
            weight.copy_(0.3 * torch.randn(weight.shape, generator=generator))
    return model


def language(model: OpenVLA, text: str, extra: list[int] = ()) -> torch.Tensor:
    ids = model.processor([IMAGES[0]], [build_prompt(text)])["input_ids"]
    ids = torch.cat([ids, torch.tensor([list(extra)], dtype=ids.dtype)], dim=1)
    return model.film_language(ids, model.get_input_embeddings()(ids))


def test_a_new_film_changes_nothing():
    """FiLM starts at zero: the same base with and without it predicts the same chunk exactly."""
    states = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.2]])
    plain = perturb(tiny("l1", True)).predict(IMAGES, TEXTS, proprio=states)
    filmed = perturb(tiny("l1", True, film=True))
    assert filmed.layout.film and filmed.film is not None
    np.testing.assert_array_equal(filmed.predict(IMAGES, TEXTS, proprio=states).actions, plain.actions)


def test_the_instruction_modulates_the_image_features():
    """With FiLM the projected patches of one image depend on the instruction's words (and only on
    them: placeholders, action tokens and `</s>` after the prompt change nothing); without FiLM they
    cannot, and a FiLM model refuses to see an image without its instruction."""
    model = perturb_film(tiny("l1", False, film=True)).eval()
    pixels = model.processor([IMAGES[0]], ["x"])["pixel_values"]
    red, blue = language(model, "reach the red ball"), language(model, "reach the blue ball")
    after = language(
        model,
        "reach the red ball",
        [model.action_placeholder_id] * 3 + [model.action_tokenizer.first_action_token, 2],
    )
    torch.testing.assert_close(after, red, rtol=0, atol=1e-6)
    with torch.no_grad():
        seen_red, seen_blue = model.project_image(pixels, red), model.project_image(pixels, blue)
        assert (seen_red - seen_blue).abs().max() > 1e-3
        torch.testing.assert_close(model.project_image(pixels, red), seen_red, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has FiLM"):
        model.project_image(pixels)
    assert tiny("l1", False).film_language(torch.tensor([[1, 5]]), torch.zeros(1, 2, 8)) is None


def test_training_pass_conditions_like_prediction():
    """A teacher-forced training pass (prompt, placeholders, `</s>`, right padding in a batch of two
    instructions of different lengths) gives the chunk that `predict` gives for the same image and
    instruction: FiLM reads the same words in both."""
    model = perturb_film(perturb(tiny("l1", False, d=2, chunk=1, film=True))).eval()
    frames = np.stack(IMAGES)
    episodes = [
        Episode(
            f"e{i}",
            "pickle",
            Path("."),
            text,
            [text],
            np.zeros((1, 2), np.float32),
            np.zeros((1, 0), np.float32),
            frames=frames[i : i + 1],
        )
        for i, text in enumerate(TEXTS)
    ]
    dataset = VLADataset(episodes, model.processor, model.action_tokenizer, statistics(2, 0)["k"]["action"])
    batch = collate([dataset[0], dataset[1]], model.processor.tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # the shorter instruction is padded
    pixels = model.processor.image_transform.normalize_batch(batch["images"])
    ids = model.head.training_inputs(batch["input_ids"], batch["labels"], 2)
    with torch.no_grad():
        out = model(ids, pixels, batch["attention_mask"], output="hidden")
    trained = model.head.teacher_forced(out, batch, 2).pred
    predicted = model.predict(IMAGES, TEXTS).normalized
    np.testing.assert_allclose(predicted, trained, atol=1e-5)


def test_film_is_saved_under_its_own_prefix_and_reloads(tmp_path):
    model = perturb_film(tiny("l1", True, film=True))
    states = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.2]])
    before = model.predict(IMAGES, TEXTS, proprio=states)
    model.save_pretrained(tmp_path)
    keys = load_file(str(next(tmp_path.glob("*.safetensors")))).keys()
    film = sorted(k for k in keys if k.startswith("film."))
    # one (gamma, beta) layer per block that runs: 2 of the tiny towers' 3, in both towers
    assert film == [f"film.towers.{t}.{b}.{p}" for t in (0, 1) for b in (0, 1) for p in ("bias", "weight")]
    loaded = OpenVLA.from_pretrained(tmp_path)
    assert loaded.layout.film
    np.testing.assert_array_equal(loaded.predict(IMAGES, TEXTS, proprio=states).actions, before.actions)
