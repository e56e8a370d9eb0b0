"""Grounding tokens (model.layout.grounding): targets from metadata, the sample layout, the weighted loss,
the validation metric, prediction, and a training run that saves and reloads them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from data_factories import make_isaac_dataset
from test_data_chunking import SIZE, identity_stats, known_episode

from vla.config import ActionLayout, ConfigError, DataConfig, LayoutConfig, OptimConfig
from vla.data.dataset import VLADataset, collate
from vla.data.episodes import DataError
from vla.data.grounding import episode_grounding
from vla.model.layout import IGNORE_INDEX
from vla.model.processing import build_prompt

D = 3  # action dims of known_episode


@pytest.fixture
def tiny():
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    model = build_tiny_model(TinyArchitecture(image_size=SIZE))
    model.config.norm_stats = {"athena": {"action": identity_stats(23)}}
    return model


def with_metadata(**metadata):
    episode = known_episode()
    episode.metadata = metadata
    return episode


def test_reach_scene_grounding_is_the_balls_place_in_the_ball_region():
    """The ball region is x 0.26-0.34, y -0.30-0.30, z 0.88-1.22 m (vla.sim.tasks): its edges map to
    -1 and +1 and its centre to 0; the named ball's two values repeat its colour's."""
    balls = {"red": [0.3, -0.30, 0.88], "green": [0.3, 0.0, 1.05], "blue": [0.3, 0.15, 1.22]}
    values = episode_grounding(with_metadata(task="reach_ball", balls=balls, color="blue"), 8)
    np.testing.assert_allclose(values, [-1, -1, 0, 0, 0.5, 1, 0.5, 1], atol=1e-9)


def test_simulated_reach_episodes_carry_their_grounding():
    from vla.config.sim import SimSettings
    from vla.sim.athena import AthenaRobot
    from vla.sim.tasks import sample_episode

    robot = AthenaRobot(SimSettings(image_size=28))
    try:
        for seed in range(5):
            spec = sample_episode(robot, "reach_ball", seed)
            balls = {c: p.tolist() for c, p in spec.balls.items()}
            values = episode_grounding(with_metadata(task="reach_ball", balls=balls, color=spec.color), 8)
            assert np.all(np.abs(values) <= 1.0)
            index = ["red", "green", "blue"].index(spec.color)
            np.testing.assert_array_equal(values[6:], values[2 * index : 2 * index + 2])
            # Higher in the world is higher in [-1, 1].
            order = np.argsort([balls[c][2] for c in ("red", "green", "blue")])
            assert np.all(np.diff(values[1::2][:3][order]) >= 0)
    finally:
        robot.close()


def test_metadata_grounding_is_used_as_given():
    assert episode_grounding(with_metadata(grounding=[0.5, -1, 1]), 3).tolist() == [0.5, -1.0, 1.0]
    # A pickled demo may hold a numpy array.
    given = np.array([0.25, 0.0], np.float32)
    assert episode_grounding(with_metadata(grounding=given), 2).tolist() == [0.25, 0.0]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "no 'grounding' list"),
        ({"task": "turn_torso"}, "no 'grounding' list"),
        ({"grounding": [0.1, 0.2]}, "gives 2 values, model.layout.grounding=3"),
        ({"grounding": [0.1, 0.2, 1.5]}, r"outside \[-1, 1\]"),
        ({"grounding": [0.1, "a", 0.2]}, "list of finite numbers"),
        ({"grounding": [0.1, math.nan, 0.2]}, "list of finite numbers"),
        ({"grounding": [0.1, True, 0.2]}, "list of finite numbers"),
        ({"grounding": [[0.1], [0.2], [0.3]]}, "list of finite numbers"),
        ({"grounding": "0.1 0.2 0.3"}, "list of finite numbers"),
        ({"grounding": np.float32(0.1)}, "list of finite numbers"),
        ({"grounding": np.array(0.1)}, "list of finite numbers"),
        ({"task": "reach_ball", "balls": {"red": [0, 0, 1]}, "color": "red"}, "do not describe a reach"),
    ],
)
def test_bad_grounding_names_the_episode(metadata, message):
    with pytest.raises(DataError, match=message) as err:
        episode_grounding(with_metadata(**metadata), 3)
    assert "'known'" in str(err.value)


def test_config_checks():
    with pytest.raises(ConfigError, match=r"model\.layout\.grounding=-1"):
        LayoutConfig(grounding=-1)
    for key, value in (("grounding_weight", -0.5), ("grounding_weight_steps", -1)):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            DataConfig(**{key: value})


def test_samples_put_grounding_tokens_between_prompt_and_actions(tiny):
    grounding = np.array([-1.0, 0.0, 0.7])
    args = (tiny.processor, tiny.action_tokenizer, identity_stats())
    plain = VLADataset([known_episode()], *args, chunk_size=2)
    grounded = VLADataset([known_episode()], *args, chunk_size=2, grounding=[grounding])
    for t in range(known_episode().num_steps):
        a, b = plain[t], grounded[t]
        n_prompt = len(a["input_ids"]) - 2 * D - 1
        inserted = b["input_ids"][n_prompt : n_prompt + 3]
        assert torch.equal(b["input_ids"][:n_prompt], a["input_ids"][:n_prompt])
        assert torch.equal(b["input_ids"][n_prompt + 3 :], a["input_ids"][n_prompt:])
        assert torch.equal(b["labels"][n_prompt : n_prompt + 3], inserted)  # trained on
        assert torch.equal(b["labels"][n_prompt + 3 :], a["labels"][n_prompt:])
        # 256 bins over [-1, 1]: a decoded value is within one bin width of the original.
        np.testing.assert_allclose(tiny.action_tokenizer.decode(inserted.numpy()), grounding, atol=2 / 256)


def _batch_and_logits(tiny, right_grounding: bool, off_bins: int = 0):
    """A batch of 3-token grounding samples and logits that put all mass on the right action tokens and,
    on the grounding tokens, on the right ones (`right_grounding`) or `off_bins` bins away; uniform
    logits (loss log V) elsewhere when not right."""
    grounding = [np.array([-0.5, 0.0, 0.5])]
    data = VLADataset(
        [known_episode()], tiny.processor, tiny.action_tokenizer, identity_stats(), grounding=grounding
    )
    batch = collate([data[t] for t in (0, 1)], pad_id=tiny.processor.tokenizer.pad_token_id)
    ids, labels = batch["input_ids"], batch["labels"]
    n_patches, vocab = tiny.num_patches, tiny.config.vocab_size
    logits = torch.zeros(len(ids), n_patches + ids.shape[1], vocab)
    first = int((labels[0] != IGNORE_INDEX).long().argmax())
    for b in range(len(ids)):
        for j in range(first, ids.shape[1]):
            if labels[b, j] == IGNORE_INDEX:
                continue
            target = int(labels[b, j])
            if j < first + 3:
                if not right_grounding:
                    continue  # uniform: cross-entropy log V
                target += off_bins  # token ids run from the highest bin down: +1 is one bin lower
            logits[b, n_patches + j - 1, target] = 100.0
    return batch, logits


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_training_loss_weights_grounding_tokens(tiny, weight):
    """Actions right (loss ~0), the 3 grounding tokens uniform (log V each): the weighted mean over a
    row's 3 grounding + D action + </s> tokens is 3 w log V / (3 w + D + 1)."""
    from vla.training.module import VLAModule

    tiny.set_layout(ActionLayout(chunk_size=1, grounding=3))
    batch, logits = _batch_and_logits(tiny, right_grounding=False)
    module = VLAModule(tiny, OptimConfig(), identity_stats(), max_steps=1, grounding_weight=weight)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.forward = lambda batch, **kwargs: type("Out", (), {"logits": logits, "loss": torch.tensor(0.0)})()
    loss = float(module.training_step(batch, 0))
    log_v = math.log(tiny.config.vocab_size)
    assert loss == pytest.approx(3 * weight * log_v / (3 * weight + D + 1), rel=1e-5)
    assert logged["train/grounding_loss"] == pytest.approx(log_v, rel=1e-5)


def test_episodes_without_grounding_values_train_only_their_actions(tiny):
    """A dataset mixing episodes with grounding values and without (the posture tasks beside reach
    scenes): every sample keeps the layout's G input tokens, those without values carry no grounding
    labels, and the token head's loss counts only the known grounding tokens: with the actions right
    and the grounding uniform (log V), a batch of one known and one unknown sample has the weighted mean
    3 w log V / (3 w + 2 (D + 1)) and a grounding loss of log V."""
    from vla.training.module import VLAModule

    tiny.set_layout(ActionLayout(chunk_size=1, grounding=3))
    values = [np.array([-0.5, 0.0, 0.5]), np.full(3, np.nan)]
    data = VLADataset(
        [known_episode(), known_episode()],
        tiny.processor,
        tiny.action_tokenizer,
        identity_stats(),
        grounding=values,
    )
    known, unknown = data[0], data[known_episode().num_steps]
    assert known["input_ids"].shape == unknown["input_ids"].shape
    n_prompt = len(known["input_ids"]) - 3 - D - 1
    assert (known["labels"][n_prompt : n_prompt + 3] != IGNORE_INDEX).all()
    assert (unknown["labels"][n_prompt : n_prompt + 3] == IGNORE_INDEX).all()
    assert torch.equal(unknown["labels"][n_prompt + 3 :], known["labels"][n_prompt + 3 :])
    batch = collate([known, unknown], pad_id=tiny.processor.tokenizer.pad_token_id)
    labels, n_patches = batch["labels"], tiny.num_patches
    logits = torch.zeros(2, n_patches + labels.shape[1], tiny.config.vocab_size)
    for b in range(2):
        for j in range(n_prompt + 3, labels.shape[1]):  # the actions and </s>: right
            logits[b, n_patches + j - 1, int(labels[b, j])] = 100.0
    weight = 4.0
    module = VLAModule(tiny, OptimConfig(), identity_stats(), max_steps=1, grounding_weight=weight)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.forward = lambda batch, **kwargs: type("Out", (), {"logits": logits, "loss": torch.tensor(0.0)})()
    loss = float(module.training_step(batch, 0))
    log_v = math.log(tiny.config.vocab_size)
    assert loss == pytest.approx(3 * weight * log_v / (3 * weight + 2 * (D + 1)), rel=1e-5)
    assert logged["train/grounding_loss"] == pytest.approx(log_v, rel=1e-5)
    # A validation batch without grounding values logs no grounding error (not a NaN that would make
    # the epoch's mean NaN); the action metrics are logged as always.
    logged.clear()
    only_unknown = collate([unknown], pad_id=tiny.processor.tokenizer.pad_token_id)
    module.forward = lambda batch, **kwargs: type(
        "Out", (), {"logits": logits[1:], "loss": torch.tensor(0.0)}
    )()
    module.on_validation_epoch_start()
    module.validation_step(only_unknown, 0)
    assert "val/grounding_l1" not in logged and logged["val/action_token_acc"] == 1.0


def test_grounding_weight_holds_for_its_steps_then_is_one(tiny):
    from vla.training.module import VLAModule

    args = (tiny, OptimConfig(), identity_stats())
    module = VLAModule(*args, max_steps=10, grounding_weight=8.0, grounding_weight_steps=3)
    assert [module.grounding_weight_at(step) for step in range(5)] == [8.0, 8.0, 8.0, 1.0, 1.0]
    always = VLAModule(*args, max_steps=10, grounding_weight=8.0)
    assert always.grounding_weight_at(10**6) == 8.0


@pytest.mark.parametrize("off_bins", [0, 4])
def test_validation_reports_grounding_error(tiny, off_bins):
    from vla.training.module import VLAModule

    tiny.set_layout(ActionLayout(chunk_size=1, grounding=3))
    batch, logits = _batch_and_logits(tiny, right_grounding=True, off_bins=off_bins)
    module = VLAModule(tiny, OptimConfig(), identity_stats(), max_steps=1)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.forward = lambda batch, **kwargs: type("Out", (), {"logits": logits, "loss": torch.tensor(0.0)})()
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    # Bins are 2/255 apart in [-1, 1]; the actions are unaffected by the grounding tokens before them.
    assert logged["val/grounding_l1"] == pytest.approx(off_bins * 2 / 255, abs=1e-6)
    assert logged["val/action_token_acc"] == 1.0 and logged["val/action_l1"] == 0.0


def test_prediction_writes_grounding_first_and_survives_save_and_load(tiny, tmp_path):
    from vla.model.modeling import OpenVLA

    tiny.set_layout(ActionLayout(chunk_size=2, grounding=3))
    images, texts = [np.full((SIZE, SIZE, 3), 90, np.uint8)] * 2, ["wave", "walk forward"]
    pred = tiny.predict(images, texts, constrain=True)
    assert pred.actions.shape == (2, 2, 23) and pred.grounding.shape == (2, 3)
    # The same greedy decoding, written out: 3 + 2 * 23 tokens, the first 3 the grounding.
    inputs = tiny.processor(images, [build_prompt(t) for t in texts])
    rows = pred.input_ids
    tokens = tiny.generate_action_tokens(rows, inputs["pixel_values"], 3 + 2 * 23, constrain=True).numpy()
    np.testing.assert_array_equal(pred.token_ids.reshape(2, -1), tokens[:, 3:])
    np.testing.assert_array_equal(pred.grounding, tiny.action_tokenizer.decode(tokens[:, :3]))
    reloaded = OpenVLA.from_pretrained(tiny.save_pretrained(tmp_path / "model"))
    assert reloaded.grounding_tokens == 3
    again = reloaded.predict(images, texts, constrain=True)
    np.testing.assert_array_equal(again.token_ids, pred.token_ids)
    np.testing.assert_array_equal(again.grounding, pred.grounding)


def test_training_run_with_grounding_from_metadata(tmp_path):
    """train.py with model.layout.grounding=2 on Isaac episodes whose metadata.json holds 'grounding': the
    metric is logged, the reloaded run writes 2 grounding values, and a dataset in which no episode has
    them fails before any training naming an episode (episodes without them among others train only
    their actions: test_episodes_without_grounding_values_train_only_their_actions)."""
    from test_train import train

    from vla.training.runs import load_run, load_train_config

    paths = make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=6)
    for i, path in enumerate(paths):
        meta = json.loads((path / "metadata.json").read_text())
        (path / "metadata.json").write_text(json.dumps({**meta, "grounding": [i / 3, -0.5]}))
    data = ["data=isaac", f"data.root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    overrides = ["model.layout.grounding=2", "data.grounding_weight=2", "data.grounding_weight_steps=1"]
    metrics = train(tmp_path / "run", [*data, *overrides])
    assert 0.0 <= metrics["val/grounding_l1"] <= 2.0
    model = load_run(tmp_path / "run")
    assert model.grounding_tokens == 2
    pred = model.predict([np.zeros((40, 40, 3), np.uint8)], ["reach the red ball"])
    assert pred.grounding.shape == (1, 2) and pred.actions.shape == (1, 23)
    # scripts/predict.py on the saved model prints the grounding values with the action.
    from PIL import Image

    from tests.conftest import load_script
    from vla.config import PredictConfig

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "frame.png")
    folder = model.save_pretrained(tmp_path / "model")
    args = dict(checkpoint=str(folder), image=str(tmp_path / "frame.png"), instruction="reach the red ball")
    printed = load_script("predict").run(PredictConfig(**args))
    np.testing.assert_allclose(printed["grounding"], pred.grounding[0])
    np.testing.assert_allclose(printed["action"], pred.actions[0])
    with pytest.raises(ConfigError, match="model.layout.grounding=3.*trained with model.layout.grounding=2"):
        load_train_config(tmp_path / "run", {"model": {"layout": {"grounding": 3}}})

    for path in paths:  # no episode with grounding values: nothing to learn them from
        meta = json.loads((path / "metadata.json").read_text())
        del meta["grounding"]
        (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="episode_000.*grounding"):
        train(tmp_path / "run2", [*data, "model.layout.grounding=2"])
    assert not (tmp_path / "run2" / "checkpoints").exists()


@pytest.mark.parametrize(("head", "tokens_first", "taught"), [("tokens", False, True), ("l1", True, True),
                                                              ("l1", False, False)])  # fmt: skip
def test_written_grounding_teaches_episodes_without_values_their_tokens(tmp_path, head, tokens_first, taught):
    """Episodes without grounding values beside others: where the model writes its grounding as tokens,
    their grounding positions are labelled with the middle bin's tokens they carry as inputs, so at
    prediction it writes what their actions were trained to read (unlabelled, it wrote untaught tokens
    and the posture families fell to 0%, docs/experiments/athena_suite.md). The l1 head's regressed
    grounding reads placeholders there and keeps them unlabelled (no grounding loss)."""
    from vla.data.datamodule import VLADataModule
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    paths = make_isaac_dataset(tmp_path / "data", n_episodes=4, steps=6)
    for i, path in enumerate(paths[:2]):
        meta = json.loads((path / "metadata.json").read_text())
        (path / "metadata.json").write_text(json.dumps({**meta, "grounding": [i / 3, -0.5]}))
    cfg = DataConfig(format="isaac", root=str(tmp_path / "data"), val_fraction=0.25, cache_images=False)
    layout = LayoutConfig(grounding=2, grounding_tokens_first=tokens_first)
    module = VLADataModule(cfg, cache_dir=tmp_path / "cache", layout=layout, action_head=head)
    stats = module.prepare()
    model = build_tiny_model(TinyArchitecture(image_size=56), norm_stats=stats)
    model.set_layout(ActionLayout(head=head, grounding=2, grounding_tokens_first=tokens_first, action_dim=23))
    module.attach(model)
    module.setup("fit")
    middle = model.action_tokenizer.encode(np.zeros(2))
    checked = 0
    for e, episode in enumerate(module.train_set.episodes):
        if not np.isnan(module.train_grounding[e]).any():
            continue
        sample = module.train_set[module.train_set.index.index((e, 0))]
        n_prompt = len(sample["input_ids"]) - 2 - 23 - 1
        labels = sample["labels"][n_prompt : n_prompt + 2].numpy()
        assert list(sample["input_ids"][n_prompt : n_prompt + 2]) == list(middle)
        assert list(labels) == (list(middle) if taught else [IGNORE_INDEX] * 2), episode.episode_id
        checked += 1
    assert checked
    if head == "tokens":  # the taught middle bins are not grounding values: val/grounding_l1 skips them
        from vla.data.dataset import collate

        batch = collate([sample], pad_id=model.processor.tokenizer.pad_token_id)
        logits = torch.zeros(1, model.num_patches + batch["labels"].shape[1], model.config.vocab_size)
        out = type("Out", (), {"logits": logits})()
        assert math.isnan(model.head.teacher_forced(out, batch, 23).metrics["grounding_l1"])
