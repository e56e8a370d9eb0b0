"""Teacher-forcing noise (data.token_noise): in training only the action tokens of the inputs move, by
at most data.token_noise_bins bins and within the 256 action tokens; the labels never do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_chunking import SIZE, identity_stats, known_episode

from vla.config import ActionLayout, ConfigError, DataConfig, OptimConfig
from vla.data.dataset import VLADataset, collate
from vla.model.layout import IGNORE_INDEX

D = 3  # action dims of known_episode


@pytest.fixture
def tiny():
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    model = build_tiny_model(TinyArchitecture(image_size=SIZE))
    model.config.norm_stats = {"athena": {"action": identity_stats(D)}}
    model.set_layout(ActionLayout(chunk_size=2, grounding=2))
    return model


def _batch(tiny):
    grounding = [np.array([-0.5, 0.5])]
    data = VLADataset(
        [known_episode()],
        tiny.processor,
        tiny.action_tokenizer,
        identity_stats(),
        chunk_size=2,
        grounding=grounding,
    )
    return collate(
        [data[t] for t in range(known_episode().num_steps)], pad_id=tiny.processor.tokenizer.pad_token_id
    )


def _module(tiny, p, bins=8):
    from vla.training.module import VLAModule

    return VLAModule(
        tiny, OptimConfig(), identity_stats(D), max_steps=1, token_noise=p, token_noise_bins=bins
    )


@pytest.mark.parametrize("bins", [1, 8])
def test_only_action_inputs_move_and_by_at_most_the_bins(tiny, bins):
    batch = _batch(tiny)
    torch.manual_seed(0)
    noisy = _module(tiny, 1.0, bins).noisy_action_inputs(batch)
    ids, new, labels = batch["input_ids"], noisy["input_ids"], batch["labels"]
    assert noisy["labels"] is labels and torch.equal(noisy["images"], batch["images"])
    labelled = labels != IGNORE_INDEX
    first = labelled.long().argmax(1)
    eos = labels.shape[1] - 1 - labelled.long().flip(1).argmax(1)
    pos = torch.arange(ids.shape[1])[None]
    actions = labelled & (pos >= first[:, None] + 2) & (pos < eos[:, None])  # after the 2 grounding tokens
    # Padded chunk steps at the episode's end carry no label and stay as they are.
    assert int(actions.sum()) == int(labelled.sum()) - 3 * len(ids)
    # Everything else is untouched: prompt, padding, grounding tokens, </s>.
    assert torch.equal(new[~actions], ids[~actions])
    shift = (new - ids)[actions]
    assert shift.abs().max() <= bins and shift.abs().max() == bins
    assert (shift != 0).float().mean() > 0.5  # probability 1: only a zero draw leaves a token as it was
    tokenizer = tiny.action_tokenizer
    assert (
        new[actions].min() >= tokenizer.first_action_token
        and new[actions].max() <= tokenizer.last_action_token
    )


def test_probability_sets_the_share_of_moved_tokens(tiny):
    batch = _batch(tiny)
    torch.manual_seed(0)
    moved = [
        (_module(tiny, p, 8).noisy_action_inputs(batch)["input_ids"] != batch["input_ids"]).sum().item()
        for p in (0.0, 0.5)
    ]
    labels = batch["labels"]
    n_actions = int((labels != IGNORE_INDEX).sum()) - 3 * len(labels)
    # p = 0.5 and a nonzero shift 16 times out of 17: about 47% of the action tokens.
    assert moved[0] == 0 and 0.3 * n_actions < moved[1] < 0.65 * n_actions


def test_training_step_feeds_the_noisy_inputs_and_validation_the_clean_ones(tiny):
    batch = _batch(tiny)
    module = _module(tiny, 1.0)
    seen = []

    def forward(b, **kwargs):
        seen.append(b["input_ids"])
        logits = torch.zeros(
            len(b["input_ids"]), tiny.num_patches + b["input_ids"].shape[1], tiny.config.vocab_size
        )
        return type("Out", (), {"logits": logits, "loss": torch.tensor(0.0)})()

    module.forward = forward
    module.log = lambda *args, **kwargs: None
    module.training_step(batch, 0)
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    assert not torch.equal(seen[0], batch["input_ids"])
    assert torch.equal(seen[1], batch["input_ids"])


def test_config_checks():
    for key, value in (("token_noise", 1.5), ("token_noise", -0.1), ("token_noise_bins", 0)):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            DataConfig(**{key: value})
