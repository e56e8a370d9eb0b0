"""data.questions: scene-question samples (object positions from metadata) beside the action samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_factories import make_isaac_dataset

from tests.conftest import ROOT
from vla.action_tokenizer import unnormalize
from vla.config import ConfigError, QuestionsConfig
from vla.data.dataset import VLADataset
from vla.data.episodes import DataError, Episode
from vla.modeling import IGNORE_INDEX

SIZE = 28
D = 3
BALLS = [
    {"red": [0.30, -0.20, 0.90], "blue": [0.35, 0.25, 1.10]},
    {"red": [0.25, 0.10, 1.00], "blue": [0.40, -0.30, 1.20]},
]
QUESTIONS = QuestionsConfig(key="balls", template="where is the {name} ball?", all_template=None, repeat=2)


@pytest.fixture(scope="module")
def tiny():
    from vla.tiny import TinyArchitecture, build_tiny_model

    return build_tiny_model(TinyArchitecture(image_size=SIZE))


def episode(i: int, balls, steps: int = 4) -> Episode:
    # Frame t is filled with 10 * t + i: a sample's pixels tell which frame it shows.
    frames = np.stack([np.full((SIZE, SIZE, 3), 10 * t + i, np.uint8) for t in range(steps)])
    return Episode(
        episode_id=f"ep{i}",
        source="isaac",
        path=ROOT / f"ep{i}",
        instruction="reach the red ball",
        instructions=["reach the red ball"],
        actions=np.zeros((steps, D), np.float32),
        states=np.zeros((steps, 0), np.float32),
        frames=frames,
        metadata={} if balls is None else {"balls": balls},
    )


def dataset(tiny, episodes, questions=QUESTIONS) -> VLADataset:
    stats = {"q01": [-1.0] * D, "q99": [1.0] * D, "mask": [True] * D}
    return VLADataset(episodes, tiny.processor, tiny.action_tokenizer, stats, questions=questions)


def test_each_object_adds_a_question_on_the_first_frame(tiny):
    data = dataset(tiny, [episode(i, balls) for i, balls in enumerate(BALLS)])
    plain = dataset(tiny, [episode(i, balls) for i, balls in enumerate(BALLS)], questions=None)
    assert len(plain) == 8 and len(plain.questions) == 0
    assert len(data) == 8 + 2 * 2 * 2  # 2 episodes x 2 objects x repeat 2, after the action samples
    tokenizer = tiny.processor.tokenizer
    asked = []
    for i in range(8, len(data)):
        sample = data[i]
        labels = sample["labels"]
        answer = labels[labels != IGNORE_INDEX]
        assert len(answer) == 3 + 1 and answer[-1] == tokenizer.eos_token_id
        prompt = sample["input_ids"][labels == IGNORE_INDEX]
        text = tokenizer.decode(prompt, skip_special_tokens=True)
        assert text.startswith("In: where is the") and text.rstrip().endswith("ball?\nOut:")
        # The first frame of the episode the question is about.
        assert torch.all(sample["images"] == sample["episode"]) and sample["step"] == 0
        asked.append((sample["episode"], text.split("the ")[1].split(" ")[0]))
    assert sorted(asked) == sorted([(e, c) for e in (0, 1) for c in ("red", "blue")] * 2)
    # Action samples are untouched.
    for i in range(8):
        assert torch.equal(data[i]["labels"], plain[i]["labels"])


def test_answers_decode_back_to_the_object_positions(tiny):
    data = dataset(tiny, [episode(i, balls) for i, balls in enumerate(BALLS)])
    tokenizer = tiny.action_tokenizer
    for i in range(8, len(data)):
        sample = data[i]
        labels = sample["labels"]
        answer = labels[labels != IGNORE_INDEX][:3].numpy()
        color = tiny.processor.tokenizer.decode(sample["input_ids"], skip_special_tokens=True)
        color = color.split("where is the ")[1].split(" ")[0]
        position = np.array(BALLS[sample["episode"]][color])
        decoded = unnormalize(tokenizer.decode(answer), data.question_stats)
        # Within one bin (2 / 256 of the 1st-99th percentile range) of the true position, except at
        # the range's ends, where the 1st/99th percentiles clip by at most 2% of the range.
        span = np.array(data.question_stats["q99"]) - np.array(data.question_stats["q01"])
        assert np.all(np.abs(decoded - position) <= span * (1 / 256 + 0.02) + 1e-9)


def test_questions_need_the_key_in_some_episode(tiny):
    with pytest.raises(DataError, match="data.questions.key='balls'"):
        dataset(tiny, [episode(0, None), episode(1, None)])
    # Episodes without the key just have no questions.
    assert len(dataset(tiny, [episode(0, None), episode(1, BALLS[1])]).questions) == 2 * 2


@pytest.mark.parametrize(
    "balls, message",
    [
        ({"red": [0.1, 0.2]}, r"episode ep0 .*balls\['red'\] must be 3 finite numbers"),
        ({"red": [0.1, float("nan"), 0.3]}, r"episode ep0 .*balls\['red'\]"),
        ([1, 2, 3], "episode ep0 .*must map object names"),
    ],
)
def test_bad_object_positions_name_the_episode(tiny, balls, message):
    with pytest.raises(DataError, match=message):
        dataset(tiny, [episode(0, balls)])


def test_all_objects_question_lists_every_position_in_name_order(tiny):
    questions = QuestionsConfig(
        key="balls", template="where is the {name} ball?", all_template="where are the balls?"
    )
    data = dataset(tiny, [episode(i, balls) for i, balls in enumerate(BALLS)], questions=questions)
    assert data.questions_per_pass == 2 * 3 and len(data) == 8 + 6  # 2 named + 1 listing per episode
    listings = [
        data[i]
        for i in range(8, len(data))
        if "are the balls" in tiny.processor.tokenizer.decode(data[i]["input_ids"])
    ]
    assert sorted(s["episode"] for s in listings) == [0, 1]
    span = np.array(data.question_stats["q99"]) - np.array(data.question_stats["q01"])
    for sample in listings:
        labels = sample["labels"]
        answer = labels[labels != IGNORE_INDEX].numpy()
        assert len(answer) == 2 * 3 + 1 and answer[-1] == tiny.processor.tokenizer.eos_token_id
        decoded = unnormalize(tiny.action_tokenizer.decode(answer[:-1]).reshape(2, 3), data.question_stats)
        # blue before red: sorted names, whatever order the metadata lists them in
        expected = np.array([BALLS[sample["episode"]]["blue"], BALLS[sample["episode"]]["red"]])
        assert np.all(np.abs(decoded - expected) <= span * (1 / 256 + 0.02) + 1e-9)
        assert torch.all(sample["images"] == sample["episode"])  # the first frame


def test_lead_passes_open_the_first_epoch_only():
    from vla.data.datamodule import ShuffleSampler

    lead = range(20, 26)  # e.g. one pass of 6 questions after 20 action samples
    sampler = ShuffleSampler(32, seed=3, lead=lead)
    first = [i for _, i in sampler]
    assert sorted(first[:6]) == list(lead) and sorted(first) == list(range(32))
    assert first[:6] != list(lead)  # shuffled among themselves
    second = [i for _, i in sampler]
    assert sorted(second) == list(range(32)) and sorted(second[:6]) != list(lead)
    # A resumed first epoch (skip what was consumed) continues the same order.
    resumed = ShuffleSampler(32, seed=3, lead=lead)
    resumed.skip = 4
    assert [i for _, i in resumed] == first[4:]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"template": "where is it?"}, "template"),
        ({"repeat": 0}, "repeat"),
        ({"repeat": 1, "lead": 2}, "lead"),
    ],
)
def test_question_settings_are_checked(kwargs, key):
    with pytest.raises(ConfigError, match=f"data.questions.{key}"):
        QuestionsConfig(key="balls", **kwargs)


def test_training_with_questions_leaves_validation_alone(tmp_path):
    """train.py with data.questions on Isaac folders whose metadata lists object positions."""
    from test_train import config, train

    from vla.adapters import build_base_model
    from vla.data.datamodule import VLADataModule

    root = tmp_path / "data"
    for i, folder in enumerate(make_isaac_dataset(root, n_episodes=4, steps=6)):
        meta = json.loads((folder / "metadata.json").read_text())
        meta["objects"] = {"cup": [0.1 * i, 0.2, 0.3], "box": [0.3, 0.1 * i, 0.5]}
        (folder / "metadata.json").write_text(json.dumps(meta))
    overrides = [
        "data=isaac", f"data.root={root}", "data.questions.key=objects", "data.questions.repeat=2",
        "data.questions.lead=1", "data.val_fraction=0.25",
    ]  # fmt: skip
    metrics = train(tmp_path / "run", overrides)
    assert np.isfinite(metrics["val/loss"])
    cfg = config(tmp_path / "run2", overrides)
    module = VLADataModule(cfg.data, cache_dir=tmp_path / "cache")
    module.attach(build_base_model(cfg.model, cfg.quantization, module.prepare()))
    module.setup()
    # 3 training episodes x (2 named objects + 1 listing) x 2 passes; the first pass opens the epoch.
    assert len(module.train_set.questions) == 3 * 3 * 2 and module.val_set.questions == []
    module.trainer = None
    loader = module.train_dataloader()
    first = [i for _, i in loader.shuffle_sampler][:9]
    assert sorted(first) == list(module.train_set.lead_indices(1))
