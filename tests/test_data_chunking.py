"""Action chunking: K future actions per sample, padding at the episode end, metrics and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_factories import make_isaac_dataset

from tests.conftest import ROOT
from vla.config import ActionLayout, LayoutConfig
from vla.data.cache import build_frame_cache
from vla.data.dataset import VLADataset, collate
from vla.data.episodes import Episode
from vla.data.isaac import load_isaac_episodes
from vla.model.layout import IGNORE_INDEX, chunk_steps
from vla.model.processing import build_prompt

SIZE = 28
D = 3
# One value per step, so each step's action tokens differ from every other step's.
STEP_VALUES = [-0.9, -0.5, 0.0, 0.5, 0.9]


@pytest.fixture(scope="module")
def tiny():
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    return build_tiny_model(TinyArchitecture(image_size=SIZE))


def identity_stats(d: int = D) -> dict:
    return {"q01": [-1.0] * d, "q99": [1.0] * d, "mask": [True] * d}


def known_episode() -> Episode:
    actions = np.repeat(np.array(STEP_VALUES, np.float32)[:, None], D, axis=1)
    steps = len(actions)
    return Episode(
        episode_id="known",
        source="pickle",
        path=ROOT,
        instruction="wave",
        instructions=["wave"],
        actions=actions,
        states=np.zeros((steps, 0), np.float32),
        frames=np.zeros((steps, SIZE, SIZE, 3), np.uint8),
    )


def dataset(tiny, chunk_size: int, episodes=None, **kwargs) -> VLADataset:
    return VLADataset(
        episodes or [known_episode()],
        tiny.processor,
        tiny.action_tokenizer,
        identity_stats(),
        chunk_size=chunk_size,
        **kwargs,
    )


def test_chunk_steps_repeat_the_last_step_and_mark_it():
    assert chunk_steps(0, 5, 3) == ([0, 1, 2], [True, True, True])
    assert chunk_steps(3, 5, 3) == ([3, 4, 4], [True, True, False])
    assert chunk_steps(4, 5, 3) == ([4, 4, 4], [True, False, False])
    assert chunk_steps(2, 5, 1) == ([2], [True])


def test_chunk_tokens_and_ignored_padding(tiny):
    single, chunked = dataset(tiny, 1), dataset(tiny, 3)
    prompt_len = len(single[0]["input_ids"]) - D - 1
    eos = tiny.processor.tokenizer.eos_token_id
    step_tokens = [single[t]["input_ids"][prompt_len : prompt_len + D].tolist() for t in range(5)]
    assert len({tuple(t) for t in step_tokens}) == 5  # distinct per step, so the layout below is checked
    for t, expected_steps, real in [
        (0, [0, 1, 2], [True, True, True]),
        (3, [3, 4, 4], [True, True, False]),
        (4, [4, 4, 4], [True, False, False]),
    ]:
        sample = chunked[t]
        ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
        assert len(ids) == prompt_len + 3 * D + 1 and ids[-1] == eos and labels[-1] == eos
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert ids[:prompt_len] == single[t]["input_ids"][:prompt_len].tolist()
        for k, (step, is_real) in enumerate(zip(expected_steps, real)):
            block = slice(prompt_len + k * D, prompt_len + (k + 1) * D)
            assert ids[block] == step_tokens[step]
            assert labels[block] == (step_tokens[step] if is_real else [IGNORE_INDEX] * D)


def reference_sample(tiny, episode: Episode, t: int, stats: dict) -> dict:
    """The sample as OpenVLA (and this repo before chunking) builds it, written out independently."""
    from vla.model.action_tokenizer import normalize

    tok = tiny.processor.tokenizer
    prompt = tok(build_prompt(episode.instruction))["input_ids"]
    empty = tiny.processor.empty_token_id
    prompt = prompt if prompt[-1] == empty else [*prompt, empty]
    actions = tiny.action_tokenizer.encode(normalize(episode.actions[t : t + 1], stats))[0].tolist()
    return {
        "input_ids": torch.tensor([*prompt, *actions, tok.eos_token_id]),
        "labels": torch.tensor([IGNORE_INDEX] * len(prompt) + [*actions, tok.eos_token_id]),
        "pixel_values": tiny.processor.image_transform(episode.frame(t)),
    }


@pytest.mark.parametrize("cached", [False, True])
def test_chunk_size_one_is_the_openvla_sample(tiny, tmp_path, cached):
    make_isaac_dataset(tmp_path / "data", n_episodes=2, steps=4, action_dim=D)
    episodes = load_isaac_episodes(tmp_path / "data").episodes
    stats = identity_stats()
    frames = None
    if cached:
        transform = tiny.processor.image_transform
        frames = build_frame_cache(episodes, transform.resize, SIZE, tmp_path / "cache", progress=False)
    data = VLADataset(episodes, tiny.processor, tiny.action_tokenizer, stats, frames=frames)
    i = 0
    for e, episode in enumerate(episodes):
        for t in range(episode.num_steps):
            sample, expected = data[i], reference_sample(tiny, episode, t, stats)
            assert (sample["episode"], sample["step"]) == (e, t)
            for key in ("input_ids", "labels"):
                assert torch.equal(sample[key], expected[key]), key
            # What the model sees: the training step normalizes the batch's uint8 images.
            seen = tiny.processor.image_transform.normalize_batch(sample["images"][None])[0]
            assert torch.equal(seen, expected["pixel_values"])
            i += 1


def test_chunk_size_must_be_positive():
    from vla.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.layout\.chunk_size=0 must be >= 1"):
        LayoutConfig(chunk_size=0)


def test_predict_returns_chunks_after_save_and_load(tiny, tmp_path):
    from vla.model.modeling import OpenVLA

    images, texts = [np.zeros((SIZE, SIZE, 3), np.uint8)] * 2, ["wave", "walk forward"]
    tiny.config.norm_stats = {"athena": {"action": identity_stats(23)}}
    assert tiny.predict(images, texts).actions.shape == (2, 23)
    tiny.set_layout(ActionLayout(chunk_size=4))
    try:
        assert tiny.predict(images, texts).actions.shape == (2, 4, 23)
        folder = tiny.save_pretrained(tmp_path / "model")
    finally:
        tiny.set_layout(ActionLayout(chunk_size=1))
    pred = OpenVLA.from_pretrained(folder).predict(images, texts)
    assert pred.actions.shape == pred.normalized.shape == pred.token_ids.shape == (2, 4, 23)


def test_validation_metrics_leave_padded_steps_out(tiny):
    """A model right on every real chunk step and wrong on every padded one scores 100%."""
    from vla.config import OptimConfig
    from vla.training.module import VLAModule

    tiny.set_layout(ActionLayout(chunk_size=3))
    try:
        data = dataset(tiny, 3)
        batch = collate([data[t] for t in (2, 3, 4)], pad_id=tiny.processor.tokenizer.pad_token_id)
        module = VLAModule(tiny, OptimConfig(), identity_stats(), max_steps=1)
        n_patches, vocab = tiny.num_patches, tiny.config.vocab_size
        ids, labels = batch["input_ids"], batch["labels"]
        wrong = tiny.action_tokenizer.first_action_token  # the bin for +1, never a target here
        logits = torch.zeros(len(ids), n_patches + ids.shape[1], vocab)
        for b in range(len(ids)):
            for j in range(1, ids.shape[1]):
                target = int(ids[b, j]) if labels[b, j] != IGNORE_INDEX else wrong
                logits[b, n_patches + j - 1, target] = 1.0  # token j is predicted one position earlier
        logged: dict[str, float] = {}
        module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
        module.forward = lambda batch, **kwargs: type(
            "Out", (), {"logits": logits, "loss": torch.tensor(0.0)}
        )()
        module.on_validation_epoch_start()
        module.validation_step(batch, 0)
        module.on_validation_epoch_end()
    finally:
        tiny.set_layout(ActionLayout(chunk_size=1))
    assert logged["val/action_token_acc"] == 1.0 and logged["val/action_l1"] == 0.0
    assert all(logged[f"val/l1_dof/{i}"] == 0.0 for i in range(D))
    record = module.val_records[0]
    # The plots get each sample's first chunk step: steps 2, 3, 4 of the episode.
    np.testing.assert_allclose(
        record["true"][:, 0], [STEP_VALUES[2], STEP_VALUES[3], STEP_VALUES[4]], atol=0.01
    )
    assert record["pred"].shape == (3, D)
    assert len(record["abs_err"]) == 3 + 2 + 1  # real chunk steps of samples at t = 2, 3, 4


@pytest.mark.slow  # ~30 s (simulated episodes); the fast chunk training path: test_data_recorder
def test_chunked_training_run_predicts_chunks_and_runs_in_the_simulator(tmp_path):
    """train.py with model.layout.chunk_size=4 and augment=openvla -> load_run -> [B, 4, 23] ->
    evaluate_policy."""
    from test_train import train

    from vla.config.sim import EvalSettings, SimSettings
    from vla.sim.evaluate import evaluate_policy
    from vla.training.runs import load_run

    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=6)
    data = ["data=isaac", f"data.root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    metrics = train(tmp_path / "run", [*data, "model.layout.chunk_size=4", "augment=openvla"])
    assert np.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/action_token_acc"] <= 1.0
    model = load_run(tmp_path / "run")
    assert model.action_chunk_size == 4 and model.processor.image_transform.center_crop_scale == 0.9
    pred = model.predict([np.zeros((40, 40, 3), np.uint8)], ["reach the red ball"])
    assert pred.actions.shape == (1, 4, 23)
    settings = EvalSettings(
        tasks=["turn_torso"], episodes_per_task=1, gif_episodes=0, sim=SimSettings(image_size=64)
    )
    report = evaluate_policy(lambda images, texts: model.predict(images, texts).actions, settings)
    assert 0.0 <= report["success_rate"] <= 1.0 and report["episodes"] == 1


def held_episode(values: list[float]) -> Episode:
    episode = known_episode()
    actions = np.repeat(np.array(values, np.float32)[:, None], D, axis=1)
    steps = len(actions)
    episode.actions = actions
    episode.states = np.zeros((steps, 0), np.float32)
    episode.frames = np.zeros((steps, SIZE, SIZE, 3), np.uint8)
    return episode


def test_drop_idle_leaves_out_steps_whose_chunk_repeats_the_previous_action(tiny):
    """Actions 0, 0, 0, 0, 0.9, 0.9 with 3-step chunks: step 1's chunk (0, 0, 0) repeats step 0's action,
    step 2's (0, 0, 0.9) moves, and so do 3 and 4 (each ends on or moves to 0.9 from a 0 before it);
    step 5's (0.9, padded 0.9 twice) repeats step 4's. Step 0 has no action before it and stays."""
    values = [0.0, 0.0, 0.0, 0.0, 0.9, 0.9]
    everything = dataset(tiny, 3, [held_episode(values)])
    moving = dataset(tiny, 3, [held_episode(values)], drop_idle=True)
    assert [t for _, t in everything.index] == [0, 1, 2, 3, 4, 5]
    assert [t for _, t in moving.index] == [0, 2, 3, 4]
    assert moving.idle_dropped == 2 and len(moving) == 4
    # With single actions only a step equal to its predecessor is a no-op: 1, 2, 3 and 5.
    assert [t for _, t in dataset(tiny, 1, [held_episode(values)], drop_idle=True).index] == [0, 4]
    # The kept samples are the same samples as without the option.
    assert torch.equal(moving[1]["labels"], everything[2]["labels"])


def test_samples_carry_the_chunk_as_normalized_actions(tiny):
    """Beside the tokens, each sample (and batch) holds the chunk in [-1, 1] and which of its steps are
    real, for heads that regress actions: identity statistics make them the episode's own values."""
    chunked = dataset(tiny, 3)
    for t, expected_steps, real in [(0, [0, 1, 2], [True, True, True]), (4, [4, 4, 4], [True, False, False])]:
        sample = chunked[t]
        expected = np.repeat(np.array(STEP_VALUES, np.float32)[expected_steps][:, None], D, axis=1)
        np.testing.assert_allclose(sample["actions"].numpy(), expected, atol=1e-6)  # (q99 - q01 + 1e-8)
        assert sample["actions"].dtype == torch.float32 and sample["action_steps"].tolist() == real
        # The tokens are those of the same values (the bins OpenVLA's tokenizer gives them).
        np.testing.assert_array_equal(
            tiny.action_tokenizer.encode(sample["actions"].numpy().astype(np.float64)).reshape(-1),
            sample["input_ids"][-1 - 3 * D : -1].numpy(),
        )
    batch = collate([chunked[0], chunked[4]], pad_id=0)
    assert batch["actions"].shape == (2, 3, D) and batch["action_steps"].tolist() == [[True] * 3, real]
