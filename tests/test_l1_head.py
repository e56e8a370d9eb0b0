"""The continuous action head (model.action_head=l1, OpenVLA-OFT) and the robot-state input
(model.proprio): the layout and weights round-trip, the head regresses below the token resolution,
the state reaches the model with either head, a training run saves, reloads and merges them, and
missing or mismatched states fail naming the episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_factories import make_isaac_dataset, write_isaac_episode
from safetensors.torch import load_file

from tests.conftest import compose_config
from vla.config import (
    ActionLayout,
    ConfigError,
    LayoutConfig,
    LoraConfig,
    ModelConfig,
    QuantizationConfig,
    TinyArchitecture,
    TrainConfig,
)
from vla.data.dataset import VLADataset, collate
from vla.data.episodes import DataError, Episode
from vla.model.modeling import OpenVLA
from vla.model.policy import Policy, policy_info
from vla.training.build import build_base_model

SIZE = 28
IMAGES = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(2)]
TEXTS = ["wave", "reach the red ball with your left hand"]


def statistics(d: int, s: int) -> dict:
    def summary(n: int, lo: float) -> dict:
        return {
            "mean": [0.0] * n,
            "std": [1.0] * n,
            "min": [lo] * n,
            "max": [-lo] * n,
            "q01": [lo] * n,
            "q99": [-lo] * n,
        }

    action = {**summary(d, -1.0), "mask": [True] * d}
    return {"k": {"action": action, "proprio": summary(s, -2.0), "num_transitions": 1, "num_trajectories": 1}}


def tiny(
    head: str,
    proprio: bool,
    d: int = 3,
    s: int = 4,
    chunk: int = 2,
    grounding: int = 0,
    film: bool = False,
    tokens_first: bool = False,
    positions: str = "dims",
) -> OpenVLA:
    cfg = ModelConfig(
        architecture=TinyArchitecture(image_size=SIZE),
        action_head=head,
        proprio=proprio,
        film=film,
        layout=LayoutConfig(
            chunk_size=chunk,
            parallel_decoding=head == "tokens",
            grounding=grounding,
            grounding_tokens_first=tokens_first,
            chunk_positions=positions,
        ),
    )
    return build_base_model(cfg, QuantizationConfig(), statistics(d, s)).eval()


def perturb(model: OpenVLA) -> OpenVLA:
    """Move the language model's weights so that decoding depends on every input (a fresh tiny model's
    ordinal action rows tie and decode one bin everywhere)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.language_model.parameters():
            weight.add_(0.5 * torch.randn(weight.shape, generator=generator))
    return model


@pytest.mark.parametrize(
    ("head", "proprio", "positions"),
    [
        ("tokens", False, "dims"),
        ("tokens", True, "dims"),
        ("l1", False, "dims"),
        ("l1", True, "dims"),
        ("l1", True, "steps"),
    ],
)
def test_layout_and_weights_round_trip(tmp_path, head, proprio, positions):
    """Saved and reloaded, a model keeps its layout and predicts the same; the head and the projector
    are stored under their own prefixes, and a model with neither has only OpenVLA's keys. The head's
    MLP reads a step's D hidden states (OpenVLA-OFT) or, with chunk_positions=steps, one."""
    model = tiny(head, proprio, positions=positions)
    states = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.2]]) if proprio else None
    before = model.predict(IMAGES, TEXTS, proprio=states)
    model.save_pretrained(tmp_path)
    loaded = OpenVLA.from_pretrained(tmp_path)
    assert loaded.layout == model.layout
    assert (loaded.layout.head, loaded.layout.proprio_dim) == (head, 4 if proprio else 0)
    assert loaded.layout.action_dim == (3 if head == "l1" else 0)
    after = loaded.predict(IMAGES, TEXTS, proprio=states)
    np.testing.assert_array_equal(after.actions, before.actions)
    assert before.actions.shape == (2, 2, 3)
    assert (before.token_ids is None) == (head == "l1")
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("action_head.") for k in keys) == (head == "l1")
    assert any(k.startswith("proprio_projector.") for k in keys) == proprio
    plain = set(tiny("tokens", False).state_dict())
    assert {k for k in keys if not k.startswith(("action_head.", "proprio_projector."))} == plain
    if head == "l1":
        hidden = model.config.llama_config.hidden_size
        assert keys["action_head.fc_in.weight"].shape == (hidden, hidden * (1 if positions == "steps" else 3))


@pytest.mark.parametrize("positions", ["dims", "steps"])
def test_l1_regresses_below_the_token_resolution(positions):
    """Targets on the bin edges of OpenVLA's 256 bins: no token can decode closer than half a bin width
    (1/255, computed below through the tokenizer), while the l1 head, trained on the same four samples,
    gets well under it, reading D positions per step (OpenVLA-OFT) or one."""
    d = 2
    edges = np.linspace(-1.0, 1.0, 256)
    targets = edges[[[40, 200], [90, 10], [150, 120], [230, 60]]].astype(np.float32)
    frames = np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in (0, 80, 160, 240)])
    episode = Episode(
        "e", "pickle", Path("."), "move", ["move"], targets, np.zeros((4, 0), np.float32), frames=frames
    )
    model = tiny("l1", False, d=d, chunk=1, positions=positions)
    tokenizer = model.action_tokenizer
    token_floor = np.abs(tokenizer.decode(tokenizer.encode(targets.astype(np.float64))) - targets).mean()
    assert token_floor == pytest.approx(1 / 255, rel=1e-3)

    stats = statistics(d, 0)["k"]["action"]
    dataset = VLADataset(
        [episode], model.processor, tokenizer, stats, step_positions=model.layout.step_positions
    )
    batch = collate([dataset[i] for i in range(4)], model.processor.tokenizer.pad_token_id)
    pixels = model.processor.image_transform.normalize_batch(batch["images"])
    fit(model, model.head.training_inputs(batch["input_ids"], batch["labels"], d), pixels, batch, steps=200)
    pred = model.predict(list(frames), ["move"] * 4)
    error = np.abs(pred.actions.reshape(4, d) - targets).mean()
    assert error < token_floor / 2, (error, token_floor)


@pytest.mark.parametrize("head", ["tokens", "l1"])
def test_the_state_reaches_the_model(head):
    """With model.proprio the robot state is one more input token: another state, another action; the
    same state, the same action; a missing or mis-sized state is refused."""
    model = perturb(tiny(head, True))
    a = np.array([[1.5, -1.5, 1.5, -1.5]] * 2)
    first = model.predict(IMAGES, TEXTS, proprio=a).actions
    np.testing.assert_array_equal(model.predict(IMAGES, TEXTS, proprio=a).actions, first)
    assert not np.array_equal(model.predict(IMAGES, TEXTS, proprio=-a).actions, first)
    with pytest.raises(ValueError, match=r"reads a 4-value robot state"):
        model.predict(IMAGES, TEXTS)
    with pytest.raises(ValueError, match=r"shape \(2, 3\); this model reads \[batch=2, 4\]"):
        model.predict(IMAGES, TEXTS, proprio=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(IMAGES, TEXTS, proprio=np.full((2, 4), np.nan))


@pytest.mark.parametrize(("head", "chunk"), [("tokens", 1), ("tokens", 2), ("l1", 1), ("l1", 2)])
def test_policy_returns_chunks_for_every_head(head, chunk):
    model = tiny(head, True, chunk=chunk)
    policy = Policy(model, policy_info(model, "memory", "torch", "openvla"))
    assert policy.info.state_dim == 4 and policy.info.chunk_size == chunk
    states = np.zeros((2, 4))
    assert policy.predict(IMAGES, TEXTS, states).actions.shape == (2, chunk, 3)
    assert policy(IMAGES, TEXTS, states).shape == (2, chunk, 3)
    assert policy.act(IMAGES[0], TEXTS[0], states[0]).shape == (chunk, 3)
    with pytest.raises(ValueError, match="reads the robot state"):
        policy.predict(IMAGES, TEXTS)


def test_samples_carry_the_normalized_state(tmp_path):
    """Training samples hold each step's state mapped with the proprio q01/q99 to [-1, 1]."""
    from vla.config import DataConfig
    from vla.data.datamodule import VLADataModule

    make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=5, state_dim=6)
    cfg = DataConfig(format="isaac", root=str(tmp_path / "data"), cache_images=False, dataset_key="k")
    module = VLADataModule(cfg, cache_dir=tmp_path / "cache", proprio=True)
    stats = module.prepare()
    model_cfg = ModelConfig(architecture=TinyArchitecture(image_size=SIZE), action_head="l1", proprio=True)
    module.attach(build_base_model(model_cfg, QuantizationConfig(), stats))
    module.setup("fit")
    sample = module.train_set[0]
    episode = module.train_episodes[0]
    low, high = (np.array(stats["k"]["proprio"][q]) for q in ("q01", "q99"))
    expected = np.clip(2 * (episode.states[0] - low) / (high - low + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(sample["states"].numpy(), expected, atol=1e-6)
    assert sample["states"].shape == (6,)


def test_missing_or_mismatched_states_fail_naming_the_episode(tmp_path):
    from vla.config import DataConfig
    from vla.data.datamodule import VLADataModule

    stateless = tmp_path / "stateless"
    make_isaac_dataset(stateless, n_episodes=3, steps=5, state_dim=0)
    cfg = DataConfig(format="isaac", root=str(stateless), cache_images=False)
    with pytest.raises(
        DataError, match=r"model\.proprio=true needs a robot state .* episode '.+' .* has none"
    ):
        VLADataModule(cfg, cache_dir=tmp_path / "cache", proprio=True).prepare()
    VLADataModule(cfg, cache_dir=tmp_path / "cache", proprio=False).prepare()  # fine without a state input

    mixed = tmp_path / "mixed"
    make_isaac_dataset(mixed, n_episodes=3, steps=5, state_dim=6)
    write_isaac_episode(mixed / "odd_episode", steps=5, state_dim=4, seed=9)
    cfg = DataConfig(format="isaac", root=str(mixed), cache_images=False)
    with pytest.raises(DataError, match=r"episode 'odd_episode' .*state dimension 4 differs"):
        VLADataModule(cfg, cache_dir=tmp_path / "cache", proprio=True).prepare()


def test_config_rejects_what_the_l1_head_cannot_use(tmp_path):
    from vla.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.token_noise=0\.5 perturbs input tokens"):
        compose_config(
            "train", ["model.action_head=l1", "data.token_noise=0.5", f"run_dir={tmp_path}"], TrainConfig
        )
    with pytest.raises(ConfigError, match=r"model\.action_head"):
        compose_config("train", ["model.action_head=flow", f"run_dir={tmp_path}"], TrainConfig)
    # The token head writes one token per value: chunk_positions does not apply to it.
    tokens = compose_config(
        "train",
        ["model.action_head=tokens", "model.layout.chunk_positions=steps", f"run_dir={tmp_path}"],
        TrainConfig,
    )
    assert ActionLayout.of(tokens.model, action_dim=3).chunk_positions == "dims"
    with pytest.raises(ConfigError, match=r"model\.layout\.chunk_positions"):
        compose_config("train", ["model.layout.chunk_positions=values", f"run_dir={tmp_path}"], TrainConfig)


@pytest.mark.parametrize(("regression", "expected"), [("l1", 0.55), ("mse", 0.505), ("huber", 0.05)])
def test_regression_losses_on_known_errors(regression, expected):
    """Errors 0.1 and 1.0 on the real step, anything on the padded one: l1 (0.1 + 1) / 2, mse
    (0.01 + 1) / 2, huber with delta 0.1 (0.5 * 0.1^2 + 0.1 * (1 - 0.05)) / 2."""
    from vla.model.heads import L1Head
    from vla.model.modeling import HiddenOutput

    class Fixed(torch.nn.Module):  # stands for ActionMLP: outputs the chunk it is given
        weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x[..., :2]

    from vla.config import ActionLayout

    head = L1Head(ActionLayout(head="l1", chunk_size=2, action_dim=2), 0, Fixed())
    head.actions = lambda hidden: torch.tensor([[[0.1, 1.0], [5.0, 5.0]]])
    labels = torch.tensor([[-100, 7, 7, 7, 7, 2]])
    batch = {"labels": labels, "actions": torch.zeros(1, 2, 2), "action_steps": torch.tensor([[True, False]])}
    out = HiddenOutput(torch.zeros(1, 6, 3))
    loss, _ = head.loss(out, batch, regression=regression)
    assert float(loss) == pytest.approx(expected)
    assert float(head.validation_loss(out, batch)) == pytest.approx(0.55)  # always L1


@pytest.mark.parametrize(("kind", "film"), [("full", False), ("lora", False), ("lora", True)])
def test_continuous_head_does_not_train_the_unused_lm_head(kind, film):
    """The l1 head never runs the language-model head: it is left frozen (full) or out of the LoRA
    targets, so every trainable weight gets a gradient (DDP refuses unused ones); the token head trains
    it as before."""
    from vla.config import LoraConfig
    from vla.training.adapters import apply_adapter

    model = apply_adapter(tiny("l1", True, film=film), LoraConfig(kind=kind))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and not any("lm_head" in n for n in names)
    assert any("action_head" in n for n in names) and any("proprio_projector" in n for n in names)
    assert any("film" in n.split(".") for n in names) == film
    batch_ids = torch.tensor([[1, 5, 6, 7, 7, 7, 7, 7, 7, 2]])
    labels = torch.tensor([[-100, -100, -100, 7, 7, 7, 7, 7, 7, 2]])
    head = model.head if kind == "full" else model.base_model.model.head
    out = model(
        input_ids=head.training_inputs(batch_ids, labels, 3),
        pixel_values=torch.zeros(1, 6, SIZE, SIZE),
        proprio=torch.zeros(1, 4),
        output="hidden",
    )
    batch = {"labels": labels, "actions": torch.ones(1, 2, 3), "action_steps": torch.tensor([[True, True]])}
    head.loss(out, batch)[0].backward()
    # The towers' last block, final norm and pool head are unused by OpenVLA's design (it reads the
    # second-to-last block, as in the 7B): frozen too.
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".featurizer.blocks.2." in n for n in frozen) and any("attn_pool" in n for n in frozen)
    assert not any(".blocks.1." in n for n in frozen if kind == "full")  # the blocks that run train
    tokens = apply_adapter(tiny("tokens", False), LoraConfig(kind=kind))
    assert any("lm_head" in n for n, p in tokens.named_parameters() if p.requires_grad)


def test_predict_script_takes_a_state_or_uses_the_mean(tmp_path, capsys):
    """`scripts/predict.py` on a model that reads a state: state=[...] is used (another state, another
    chunk); without it the training data's mean state is used and said so on stderr; a wrong size fails."""
    from PIL import Image

    from tests.conftest import load_script
    from vla.config import PredictConfig

    model = perturb(tiny("l1", True))
    model.save_pretrained(tmp_path / "model")
    Image.fromarray(IMAGES[0]).save(tmp_path / "frame.png")
    script = load_script("predict")

    def predict(state):
        cfg = PredictConfig(checkpoint=str(tmp_path / "model"), image=str(tmp_path / "frame.png"),
                            instruction="wave", state=state)  # fmt: skip
        return np.array(script.run(cfg)["action"])

    mean = predict(None)
    assert mean.shape == (2, 3) and "using the training data's mean state" in capsys.readouterr().err
    np.testing.assert_array_equal(predict([0.0] * 4), mean)  # the statistics' mean state is 0 here
    assert not np.array_equal(predict([1.5, -1.5, 1.5, -1.5]), mean)
    with pytest.raises(ValueError, match=r"shape \(1, 3\); this model reads \[batch=1, 4\]"):
        predict([0.0, 0.0, 0.0])


def fit(model: OpenVLA, ids: torch.Tensor, pixels: torch.Tensor, batch: dict, steps: int = 200) -> None:
    """Train every weight on one batch of a continuous-head model (AdamW 1e-3, cosine), then eval mode."""
    torch.manual_seed(0)
    head = model.head
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    model.train()
    for _ in range(steps):
        loss, _ = head.loss(model(ids, pixels, batch["attention_mask"], output="hidden"), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


def grounded_episodes(d: int = 2) -> list[Episode]:
    """Two 4-step episodes with distinct flat frames: the first with 3 grounding values in its metadata,
    the second without (a task that has none)."""
    episodes = []
    for i, meta in enumerate([{"grounding": [0.5, -0.25, 0.8]}, {}]):
        frames = np.stack([np.full((SIZE, SIZE, 3), 60 * i + 20 * t, np.uint8) for t in range(4)])
        actions = np.linspace(-0.5, 0.5, 4 * d, dtype=np.float32).reshape(4, d) * (1 - 2 * i)
        episodes.append(
            Episode(
                f"e{i}",
                "pickle",
                Path("."),
                "move",
                ["move"],
                actions,
                np.zeros((4, 0), np.float32),
                frames=frames,
                metadata=meta,
            )
        )
    return episodes


@pytest.mark.parametrize("positions", ["dims", "steps"])
def test_l1_head_learns_grounding_as_an_auxiliary_target(tmp_path, positions):
    """With model.layout.grounding=G the continuous head reads G more placeholders and regresses the
    episode's grounding values beside the actions: trained on a few samples it predicts them closely,
    and prediction gives the teacher-forced pass's chunk; samples of an episode without values add no grounding loss; the grounding head is
    saved under its own prefix and predictions survive a save and reload. The chunk reads D
    placeholders per step (OpenVLA-OFT) or, with chunk_positions=steps, one."""
    from vla.data.grounding import dataset_grounding

    d = 2
    model = tiny("l1", False, d=d, chunk=1, grounding=3, positions=positions)
    per_step = d if positions == "dims" else 1
    assert model.layout.placeholders == 3 + per_step
    episodes = grounded_episodes(d)
    grounding = dataset_grounding(episodes, 3, optional=True)
    assert np.isnan(grounding[1]).all()
    dataset = VLADataset(
        episodes,
        model.processor,
        model.action_tokenizer,
        statistics(d, 0)["k"]["action"],
        grounding=grounding,
        step_positions=model.layout.step_positions,
    )
    batch = collate([dataset[i] for i in range(len(dataset))], model.processor.tokenizer.pad_token_id)
    prompt = len(dataset.prompt_ids["move"])
    assert batch["input_ids"].shape[1] == prompt + 3 + per_step + 1  # prompt, G, chunk, </s>
    pixels = model.processor.image_transform.normalize_batch(batch["images"])
    head = model.head
    ids = head.training_inputs(batch["input_ids"], batch["labels"], d)
    assert int((ids == model.action_placeholder_id).sum(1)[0]) == 3 + per_step

    # Only the episode without values: the grounding loss is zero and the total is the action loss.
    without = {k: v[4:] for k, v in batch.items()}
    out = model(ids[4:], pixels[4:], without["attention_mask"], output="hidden")
    total, g_loss = head.loss(out, without, grounding_weight=5.0)
    assert float(g_loss.detach()) == 0.0
    assert float(total.detach()) == pytest.approx(float(head.validation_loss(out, without).detach()))

    fit(model, ids, pixels, batch)
    frames = [episodes[0].frames[0], episodes[1].frames[0]]
    pred = model.predict(frames, ["move"] * 2)
    assert pred.grounding.shape == (2, 3)
    np.testing.assert_allclose(pred.grounding[0], [0.5, -0.25, 0.8], atol=0.05)
    forced = head.teacher_forced(model(ids, pixels, batch["attention_mask"], output="hidden"), batch, d)
    assert forced.metrics["grounding_l1"] < 0.05
    # Prediction is the teacher-forced pass: the same chunk for the same first frames.
    np.testing.assert_allclose(pred.normalized, forced.pred[[0, 4]], atol=1e-5)

    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("grounding_head.") for k in keys)
    again = OpenVLA.from_pretrained(tmp_path).predict(frames, ["move"] * 2)
    np.testing.assert_array_equal(again.grounding, pred.grounding)
    np.testing.assert_array_equal(again.actions, pred.actions)


def test_optional_grounding_needs_some_episode_with_values():
    """The continuous head's grounding tolerates episodes without values, not a dataset with none."""
    from vla.data.grounding import dataset_grounding

    episodes = grounded_episodes()
    with pytest.raises(DataError, match=r"episode 'e1' .*needs grounding targets"):
        dataset_grounding(episodes, 3)  # the token head needs every episode's
    with pytest.raises(DataError, match=r"episode 'e1' .*needs grounding targets"):
        dataset_grounding(episodes[1:], 3, optional=True)
    with pytest.raises(DataError, match=r"episode 'e0' .*gives 3 values, model.layout.grounding=2"):
        dataset_grounding(episodes, 2, optional=True)


def tokens_first_batch(model: OpenVLA, d: int):
    from vla.data.grounding import dataset_grounding

    episodes = grounded_episodes(d)
    grounding = dataset_grounding(episodes, 3, optional=True)
    stats = statistics(d, 0)["k"]["action"]
    dataset = VLADataset(episodes, model.processor, model.action_tokenizer, stats, grounding=grounding)
    batch = collate([dataset[i] for i in range(len(dataset))], model.processor.tokenizer.pad_token_id)
    pixels = model.processor.image_transform.normalize_batch(batch["images"])
    return episodes, batch, pixels


def test_grounding_tokens_first_layout(tmp_path):
    """model.layout.grounding_tokens_first: the G grounding values stay bin tokens before the chunk's
    placeholders (ECoT, then OpenVLA-OFT) and the chunk reads them (other tokens there give other
    actions); samples without grounding values add no grounding loss; teacher-forcing noise moves only
    known grounding tokens; there is no grounding_head and the language-model head is trained; a save
    and reload predicts the same; ONNX export refuses it by name; the token head cannot take the key."""
    from vla.export.onnx import export_onnx
    from vla.training.adapters import apply_adapter

    with pytest.raises(ConfigError, match="grounding_tokens_first"):
        ModelConfig(action_head="tokens", layout=LayoutConfig(grounding=3, grounding_tokens_first=True))
    with pytest.raises(ConfigError, match="grounding > 0"):
        LayoutConfig(grounding_tokens_first=True)
    d = 2
    model = perturb(tiny("l1", False, d=d, chunk=1, grounding=3, tokens_first=True))
    assert model.layout.placeholders == d and model.grounding_head is None
    apply_adapter(model, LoraConfig(kind="full"))
    assert model.language_model.lm_head.weight.requires_grad  # it writes the grounding tokens
    episodes, batch, pixels = tokens_first_batch(model, d)
    head = model.head
    ids = head.training_inputs(batch["input_ids"], batch["labels"], d)
    assert int((ids == model.action_placeholder_id).sum(1)[0]) == d
    true_tokens = torch.as_tensor(model.action_tokenizer.encode(np.array([0.5, -0.25, 0.8])))
    grounding_at = torch.isin(ids, true_tokens) & (batch["labels"] != -100)
    assert (grounding_at[:4].sum(1) == 3).all() and not grounding_at[4:].any()

    without = {k: v[4:] for k, v in batch.items()}
    out = model(ids[4:], pixels[4:], without["attention_mask"], output="hidden")
    total, g_loss = head.loss(out, without, grounding_weight=5.0)
    assert float(g_loss.detach()) == 0.0
    assert float(total.detach()) == pytest.approx(float(head.validation_loss(out, without).detach()))
    out = model(ids[:4], pixels[:4], batch["attention_mask"][:4], output="hidden")
    total, g_loss = head.loss(out, {k: v[:4] for k, v in batch.items()}, grounding_weight=5.0)
    assert float(g_loss.detach()) > 0.0

    noisy = head.noisy_inputs(ids, batch["labels"], d, 1.0, 8)
    moved = noisy != ids
    assert moved.any() and not moved[~grounding_at].any()

    other = torch.where(grounding_at, torch.full_like(ids, model.action_tokenizer.first_action_token), ids)
    with torch.no_grad():
        _, a = head._outputs(model(ids[:1], pixels[:1], output="hidden"), batch["labels"][:1])
        _, b = head._outputs(model(other[:1], pixels[:1], output="hidden"), batch["labels"][:1])
    assert float((a - b).abs().max()) > 1e-3

    model.eval()
    frames = [episodes[0].frames[0], episodes[1].frames[0]]
    pred = model.predict(frames, ["move"] * 2)
    assert pred.grounding.shape == (2, 3) and pred.actions.shape == (2, 1, d)
    # The chunk continues from the grounding tokens' KV cache: as a pass over everything would give.
    from vla.model.processing import build_prompt

    inputs = model.processor(frames, [build_prompt("move")] * 2)
    full = model.predict_action(**inputs, use_cache=False)
    np.testing.assert_array_equal(full.grounding, pred.grounding)
    np.testing.assert_allclose(full.normalized, pred.normalized, atol=1e-5)
    model.save_pretrained(tmp_path / "model")
    keys = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not any(k.startswith("grounding_head.") for k in keys)
    again = OpenVLA.from_pretrained(tmp_path / "model")
    assert again.layout.grounding_tokens_first
    repeat = again.predict(frames, ["move"] * 2)
    np.testing.assert_array_equal(repeat.grounding, pred.grounding)
    np.testing.assert_array_equal(repeat.actions, pred.actions)
    with pytest.raises(ValueError, match="grounding_tokens_first"):
        export_onnx(again, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.slow
def test_l1_head_learns_to_write_grounding_tokens_first():
    """Trained on a few samples, greedy decoding writes the episode's grounding tokens (within one bin)
    and the chunk after them regresses the actions."""
    d = 2
    model = tiny("l1", False, d=d, chunk=1, grounding=3, tokens_first=True)
    episodes, batch, pixels = tokens_first_batch(model, d)
    head = model.head
    ids = head.training_inputs(batch["input_ids"], batch["labels"], d)
    fit(model, ids, pixels, batch)
    pred = model.predict([episodes[0].frames[0], episodes[1].frames[0]], ["move"] * 2)
    step = 2.0 / 256  # one bin of the action tokenizer
    np.testing.assert_allclose(pred.grounding[0], [0.5, -0.25, 0.8], atol=step)
    np.testing.assert_allclose(pred.actions[0, 0], episodes[0].actions[0], atol=0.05)
    metrics = head.teacher_forced(
        model(ids, pixels, batch["attention_mask"], output="hidden"), batch, d
    ).metrics
    assert metrics["grounding_l1"] <= step
