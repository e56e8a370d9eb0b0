"""optim.action_label_sigma: Gaussian soft targets over the action bins (HL-Gauss) in the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from vla.action_tokenizer import ActionTokenizer
from vla.config import ConfigError, OptimConfig
from vla.modeling import IGNORE_INDEX
from vla.module import soft_action_loss

VOCAB = 300  # unpadded vocabulary: action tokens are ids 44..299 (bin b is id 299 - b)
PADDED = 320
PATCHES = 3


def batch(action_ids: list[int], eos: int = 2, seed: int = 0):
    """Logits [1, P + T, V] and labels [1, T] for a prompt of 2 tokens, the action ids, then </s>."""
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, *action_ids, eos]])
    logits = torch.randn(1, PATCHES + labels.shape[1], PADDED, generator=torch.Generator().manual_seed(seed))
    return logits, labels


def test_a_tiny_sigma_is_the_one_hot_cross_entropy():
    logits, labels = batch([299, 200, 44, 150])
    tokenizer = ActionTokenizer(VOCAB)
    # The model's own causal-LM loss: position P - 1 + j predicts text token j (token 0 is never scored).
    expected = torch.nn.functional.cross_entropy(
        logits[0, PATCHES:-1], labels[0, 1:], ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(soft_action_loss(logits, labels, tokenizer, 1e-3), expected, atol=1e-5)


def test_the_target_is_the_normal_mass_of_each_bin():
    """With uniform logits the gradient of cross-entropy is p - target: on the true bin
    1/V - (Phi(0.5) - Phi(-0.5)) = 1/V - 0.3829 for sigma 1, on its neighbours 1/V - 0.2417, and the
    </s> label keeps a one-hot target."""
    tokenizer = ActionTokenizer(VOCAB)
    logits = torch.zeros(1, PATCHES + 4, PADDED, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 170, 2]])  # one action token (bin 129), then </s>
    soft_action_loss(logits, labels, tokenizer, 1.0).backward()
    grad = logits.grad[0] * 2  # the loss is a mean over the 2 scored tokens
    at_action = grad[PATCHES - 1 + 2]  # the position that predicts label 2
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert at_action[170].item() == pytest.approx(1 / PADDED - (phi(0.5) - phi(-0.5)), abs=1e-5)
    assert at_action[171].item() == pytest.approx(1 / PADDED - (phi(1.5) - phi(0.5)), abs=1e-5)
    assert at_action[169].item() == pytest.approx(1 / PADDED - (phi(1.5) - phi(0.5)), abs=1e-5)
    assert at_action[2].item() == pytest.approx(1 / PADDED, abs=1e-6)  # </s> is not an action bin
    at_eos = grad[PATCHES - 1 + 3]
    assert at_eos[2].item() == pytest.approx(1 / PADDED - 1, abs=1e-5)


def test_a_near_miss_costs_less_than_a_far_one():
    tokenizer = ActionTokenizer(VOCAB)
    labels = torch.tensor([[IGNORE_INDEX, 150, 2]])
    losses = []
    for predicted in (151, 250):  # one bin off, 100 bins off, equally confident
        logits = torch.zeros(1, PATCHES + 3, PADDED)
        logits[0, PATCHES - 1 + 1, predicted] = 10.0
        logits[0, PATCHES - 1 + 2, 2] = 10.0
        losses.append(soft_action_loss(logits, labels, tokenizer, 2.0).item())
    assert losses[0] < losses[1] - 0.5  # (1 - 0.18) * 10 / 2 against 10 / 2: the target gives bin 151 18%


def test_sigma_must_not_be_negative():
    with pytest.raises(ConfigError, match="optim.action_label_sigma"):
        OptimConfig(action_label_sigma=-1.0)
