"""Parallel decoding (model.layout.parallel_decoding, OpenVLA-OFT): the action chunk comes from one pass
over placeholder inputs, in training (teacher forcing never shows an action token the true ones before it)
and at prediction (torch and onnxruntime), and the layout is saved with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_chunking import SIZE, identity_stats, known_episode

from vla.config import ActionLayout, ConfigError, OptimConfig
from vla.data.dataset import VLADataset, collate
from vla.model.heads import label_logits
from vla.model.layout import IGNORE_INDEX
from vla.model.processing import build_prompt

D = 3  # action dims of known_episode
IMAGES = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(3)]
TEXTS = ["wave", "reach the red ball with your left hand", "walk"]  # prompts of different lengths


@pytest.fixture
def tiny():
    """A tiny model whose language model is perturbed so that greedy decoding varies by position and
    input (a fresh one's ordinal action rows tie and decode one bin everywhere)."""
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    model = build_tiny_model(TinyArchitecture(image_size=SIZE)).eval()
    model.config.norm_stats = {"athena": {"action": identity_stats(D)}}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.language_model.parameters():
            weight.add_(0.5 * torch.randn(weight.shape, generator=generator))
    return model


def _constrained_argmax(model, logits: torch.Tensor) -> np.ndarray:
    lo, hi = model.action_tokenizer.first_action_token, model.action_tokenizer.last_action_token
    return (logits[..., lo : hi + 1].argmax(-1) + lo).numpy()


@pytest.mark.parametrize("grounding", [0, 2])
def test_prediction_is_one_teacher_forced_pass_over_placeholders(tiny, grounding):
    """The definition: with the prompt, the grounding tokens the model wrote and K*D placeholders as
    input, one plain forward pass (no cache) gives every action token at once."""
    tiny.set_layout(ActionLayout(chunk_size=2, grounding=grounding, parallel_decoding=True))
    pred = tiny.predict(IMAGES, TEXTS, constrain=True)
    assert pred.actions.shape == (3, 2, D) and pred.grounding.shape == (3, grounding)
    n_actions = 2 * D
    for i, text in enumerate(TEXTS):
        inputs = tiny.processor([IMAGES[i]], [build_prompt(text)])
        ids = pred.input_ids[i]
        written = tiny.action_tokenizer.encode(pred.grounding[i]).tolist()
        full = torch.tensor([ids + written + [tiny.action_placeholder_id] * (n_actions - 1)])
        with torch.no_grad():
            logits = tiny(full, inputs["pixel_values"]).logits
        first = logits.shape[1] - n_actions  # the position that predicts the first action token
        expected = _constrained_argmax(tiny, logits[0, first:])
        np.testing.assert_array_equal(pred.token_ids[i].reshape(-1), expected)
    # Without the KV cache: the same tokens.
    inputs = tiny.processor(IMAGES, [build_prompt(t) for t in TEXTS])
    again = tiny.predict_action(**inputs, constrain=True, use_cache=False)
    np.testing.assert_array_equal(again.token_ids, pred.token_ids)


def test_parallel_and_autoregressive_decoding_differ(tiny):
    """The switch does something: the same weights decode other chunks token by token."""
    tiny.set_layout(ActionLayout(chunk_size=2, parallel_decoding=True))
    parallel = tiny.predict(IMAGES, TEXTS, constrain=True).token_ids
    tiny.set_layout(ActionLayout(chunk_size=2, parallel_decoding=False))
    serial = tiny.predict(IMAGES, TEXTS, constrain=True).token_ids
    assert not np.array_equal(parallel, serial)
    np.testing.assert_array_equal(parallel[:, 0, 0], serial[:, 0, 0])  # the first token sees no other


def _training_logits(tiny, batch):
    from vla.training.module import VLAModule

    module = VLAModule(tiny, OptimConfig(), identity_stats(D), max_steps=1)
    with torch.no_grad():
        out = module(batch)
    return label_logits(out.logits, batch["labels"]), out.loss


@pytest.mark.parametrize("parallel", [False, True])
def test_training_never_shows_an_action_token_the_true_ones_before_it(tiny, parallel):
    """Teacher forcing: change every action token of the inputs (labels unchanged). With parallel
    decoding the logits and the loss stay the same (the inputs there are placeholders); without it the
    later action tokens' logits move."""
    tiny.set_layout(ActionLayout(chunk_size=2, parallel_decoding=parallel))
    data = VLADataset(
        [known_episode()], tiny.processor, tiny.action_tokenizer, identity_stats(), chunk_size=2
    )
    batch = collate([data[t] for t in (0, 3)], pad_id=tiny.processor.tokenizer.pad_token_id)
    labels = batch["labels"]
    actions = (labels != IGNORE_INDEX) & (batch["input_ids"] >= tiny.action_tokenizer.first_action_token)
    assert int(actions.sum()) == 2 * 2 * D
    other = dict(batch)
    lo, hi = tiny.action_tokenizer.first_action_token, tiny.action_tokenizer.last_action_token
    other["input_ids"] = torch.where(
        actions, lo + (batch["input_ids"] - lo + 97) % (hi - lo + 1), batch["input_ids"]
    )
    logits, loss = _training_logits(tiny, batch)
    moved_logits, moved_loss = _training_logits(tiny, other)
    if parallel:
        torch.testing.assert_close(moved_logits, logits)
        torch.testing.assert_close(moved_loss, loss)
    else:
        assert not torch.allclose(moved_logits, logits)


def test_saved_model_keeps_parallel_decoding(tiny, tmp_path):
    from vla.model.modeling import OpenVLA

    tiny.set_layout(ActionLayout(chunk_size=2, grounding=1, parallel_decoding=True))
    pred = tiny.predict(IMAGES, TEXTS, constrain=True)
    reloaded = OpenVLA.from_pretrained(tiny.save_pretrained(tmp_path / "model"))
    assert reloaded.parallel_decoding and reloaded.grounding_tokens == 1
    again = reloaded.predict(IMAGES, TEXTS, constrain=True)
    np.testing.assert_array_equal(again.token_ids, pred.token_ids)
    np.testing.assert_array_equal(again.grounding, pred.grounding)


def test_training_run_with_parallel_decoding(tmp_path):
    """train.py with model.layout.parallel_decoding=true: the reloaded run decodes in parallel, and the key
    cannot change after training."""
    from data_factories import make_isaac_dataset
    from test_train import train

    from vla.training.runs import load_run, load_train_config

    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=6)
    data = ["data=isaac", f"data.root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    metrics = train(
        tmp_path / "run", [*data, "model.layout.parallel_decoding=true", "model.layout.chunk_size=2"]
    )
    assert np.isfinite(metrics["val/loss"])
    model = load_run(tmp_path / "run")
    assert model.parallel_decoding and model.action_chunk_size == 2
    assert model.predict([np.zeros((40, 40, 3), np.uint8)], ["reach"]).actions.shape[:2] == (1, 2)
    with pytest.raises(
        ConfigError,
        match="model.layout.parallel_decoding=False.*trained with model.layout.parallel_decoding=True",
    ):
        load_train_config(tmp_path / "run", {"model": {"layout": {"parallel_decoding": False}}})
