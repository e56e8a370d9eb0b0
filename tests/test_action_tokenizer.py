"""OpenVLA's action discretization and normalization, from the formulas in its code."""

from __future__ import annotations

import numpy as np
import pytest

from vla.model.action_tokenizer import ActionTokenizer, StatisticsError, action_stats, normalize, unnormalize


def test_bin_edges_and_token_mapping():
    tok = ActionTokenizer(vocab_size=32000)
    # Bin i (np.digitize - 1 over 256 uniform edges on [-1, 1]) is token vocab_size - 1 - i.
    assert tok.encode(np.array([-1.0]))[0] == 31999
    assert tok.encode(np.array([1.0]))[0] == 31744
    assert tok.encode(np.array([-5.0, 5.0])).tolist() == [31999, 31744]  # clipped first
    # Decoding uses the 255 midpoints; the two highest tokens share the top centre (OpenVLA clips).
    centre = (1 - 1 / 255) * 1.0
    assert tok.decode(np.array([31999]))[0] == pytest.approx(-centre)
    assert tok.decode(np.array([31745, 31744])) == pytest.approx([centre, centre])
    assert tok.decode(np.array([5])) == pytest.approx([centre])  # a non-action id: extreme bin


def test_round_trip_error_is_under_one_bin():
    tok = ActionTokenizer(vocab_size=1024)
    x = np.random.default_rng(0).uniform(-1, 1, size=(100, 23))
    ids = tok.encode(x)
    assert ids.shape == (100, 23)
    assert ids.min() >= 1024 - 256 and ids.max() <= 1023
    assert np.abs(tok.decode(ids) - x).max() <= 2 / 255 + 1e-12


def test_normalize_matches_bounds_q99_and_mask():
    stats = {"q01": [0.0, -2.0, 0.0], "q99": [10.0, 2.0, 1.0], "mask": [True, True, False]}
    x = np.array([[5.0, 3.0, 0.7], [0.0, -2.0, 1.0]])
    n = normalize(x, stats)
    np.testing.assert_allclose(n, [[0.0, 1.0, 0.7], [-1.0, -1.0, 1.0]], atol=1e-7)
    back = unnormalize(np.array([[0.0, 0.5, 0.3]]), stats)
    np.testing.assert_allclose(back, [[5.0, 1.0, 0.3]])


def test_dimension_mismatch_is_reported():
    with pytest.raises(StatisticsError, match="23 dimensions, the statistics 7"):
        normalize(np.zeros((2, 23)), {"q01": [0] * 7, "q99": [1] * 7})


def test_action_stats_key_selection():
    stats = {"a": {"action": {"q01": [0], "q99": [1]}}}
    assert action_stats(stats, None)[0] == "a"
    with pytest.raises(StatisticsError, match="available keys: \\['a'\\]"):
        action_stats(stats, "b")
    with pytest.raises(StatisticsError, match="empty"):
        action_stats({}, None)
