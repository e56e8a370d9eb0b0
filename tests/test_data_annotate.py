"""Per-step language annotation from motion (vla.data.annotate) on constructed 23-DoF action sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_factories import make_isaac_dataset

from vla.config import AnnotationConfig, ConfigError, DataConfig
from vla.data.annotate import TEMPLATES, annotate_episodes, classify_phases
from vla.data.datamodule import VLADataModule
from vla.data.episodes import DataError, Episode

LEGS, ARMS, TORSO = list(range(0, 12)), list(range(12, 20)), [20, 21, 22]
TASK = "wave the right hand"


def ramp(steps: int, dims: list[int], rate: float, *, start: int = 0, stop: int | None = None) -> np.ndarray:
    """23-DoF actions at 0 where each of `dims` moves by `rate` rad per step during [start, stop)."""
    stop = steps if stop is None else stop
    actions = np.zeros((steps, 23), dtype=np.float32)
    progress = np.clip(np.arange(steps) - start, 0, stop - start).astype(np.float32)
    actions[:, dims] = rate * progress[:, None]
    return actions


def episode(actions: np.ndarray, name: str = "ep") -> Episode:
    steps = len(actions)
    return Episode(
        episode_id=name,
        source="pickle",
        path=Path(name),
        instruction=TASK,
        instructions=[TASK],
        actions=actions,
        states=np.zeros((steps, 0), dtype=np.float32),
        frames=np.zeros((steps, 2, 2, 3), dtype=np.uint8),
    )


# 0.05 rad/step on every joint of a group is clearly moving (norm >= 0.087 > 0.01); a single joint at
# 0.003 rad/step is a small adjustment (between still_threshold 0.001 and move_threshold 0.01).
@pytest.mark.parametrize(
    ("moving", "rate", "phase"),
    [
        (LEGS, 0.05, "walking"),
        (ARMS, 0.05, "manipulation"),
        (TORSO, 0.05, "balancing"),
        (LEGS + ARMS, 0.05, "combined"),
        (LEGS + ARMS + TORSO, 0.05, "combined"),
        (LEGS + TORSO, 0.05, "walking"),
        (ARMS + TORSO, 0.05, "manipulation"),
        ([14], 0.003, "preparation"),
        ([], 0.0, "idle"),
    ],
)
def test_each_phase_from_the_moving_groups(moving, rate, phase):
    # Steps from 1 on: step 0 has no previous action, so its motion is the average of a partial window.
    phases = classify_phases(ramp(30, moving, rate), AnnotationConfig())
    assert set(phases[2:]) == {phase}


def test_phases_follow_the_motion_over_time():
    actions = ramp(60, ARMS, 0.05, start=20, stop=40)  # still, arms move for 20 steps, still
    phases = classify_phases(actions, AnnotationConfig(window=3))
    assert set(phases[:18]) == {"idle"}
    assert set(phases[22:39]) == {"manipulation"}
    assert set(phases[43:]) == {"idle"}


def test_thresholds_and_groups_are_config():
    actions = ramp(30, ARMS, 0.05)
    assert set(classify_phases(actions, AnnotationConfig(move_threshold=1.0, still_threshold=0.5))) == {
        "idle"
    }
    # The same motion counts as legs when the layout says those dims are legs.
    swapped = AnnotationConfig(leg_dims=ARMS, arm_dims=LEGS)
    assert set(classify_phases(actions, swapped)[2:]) == {"walking"}


def test_annotated_instructions_phrase_the_task_for_each_phase():
    actions = np.concatenate([ramp(20, LEGS, 0.05), ramp(20, LEGS, 0.05)[-1:] + ramp(20, ARMS, 0.05)])
    [annotated] = annotate_episodes([episode(actions)], "annotated", AnnotationConfig(window=1))
    texts = annotated.step_instructions
    assert len(texts) == 40 and all(TASK in text for text in texts)
    walking = {t.format(task=TASK) for t in TEMPLATES["walking"]}
    manipulation = {t.format(task=TASK) for t in TEMPLATES["manipulation"]}
    assert texts[5] in walking and texts[25] in manipulation
    assert len(set(texts[1:20])) == 1  # one phrasing per segment
    assert annotated.instruction == TASK  # the metadata instruction stays


def test_metadata_mode_leaves_episodes_alone():
    ep = episode(ramp(10, LEGS, 0.05))
    [same] = annotate_episodes([ep], "metadata", AnnotationConfig())
    assert same.step_instructions is None


def _many_segments(name: str) -> Episode:
    # Alternating arm / leg motion: 6 segments, so 6 draws of a phrasing per episode.
    parts, offset = [], np.zeros(23, np.float32)
    for k in range(6):
        part = offset + ramp(10, ARMS if k % 2 else LEGS, 0.05)
        parts.append(part)
        offset = part[-1]
    return episode(np.concatenate(parts), name)


def test_phrasing_is_reproducible_and_changes_with_the_seed():
    episodes = [_many_segments(f"ep{i}") for i in range(4)]
    first = annotate_episodes(episodes, "annotated", AnnotationConfig(seed=0))
    again = annotate_episodes(list(reversed(episodes)), "annotated", AnnotationConfig(seed=0))[::-1]
    other = annotate_episodes(episodes, "annotated", AnnotationConfig(seed=1))
    assert [e.step_instructions for e in first] == [e.step_instructions for e in again]
    assert [e.step_instructions for e in first] != [e.step_instructions for e in other]


def test_both_mixes_metadata_and_annotated_per_step_reproducibly():
    ep = _many_segments("mixed")
    [annotated] = annotate_episodes([ep], "annotated", AnnotationConfig())
    [both] = annotate_episodes([ep], "both", AnnotationConfig())
    [both_again] = annotate_episodes([ep], "both", AnnotationConfig())
    assert both.step_instructions == both_again.step_instructions
    from_metadata = [t for t, text in enumerate(both.step_instructions) if text == TASK]
    assert 10 < len(from_metadata) < 50  # ~30 of 60 at even odds
    for t, text in enumerate(both.step_instructions):
        assert text in (TASK, annotated.step_instructions[t])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arm_dims": [12, 13, 23, 24]}, r"data.annotation.arm_dims holds dimension\(s\) \[23, 24\]"),
        ({"torso_dims": [30]}, r"data.annotation.torso_dims holds dimension\(s\) \[30\]"),
    ],
)
def test_groups_outside_the_action_dim_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        classify_phases(ramp(10, LEGS, 0.05), AnnotationConfig(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"torso_dims": [11, 20]}, "torso_dims and data.annotation.leg_dims both hold dimension 11"),
        ({"arm_dims": []}, "arm_dims must list at least one"),
        ({"window": 4}, "window=4 must be an odd"),
        ({"still_threshold": 0.1, "move_threshold": 0.01}, "still_threshold <= move_threshold"),
    ],
)
def test_bad_annotation_config_fails(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnnotationConfig(**kwargs)


def test_instructions_choice_is_checked():
    with pytest.raises(ConfigError, match=r"data.instructions='bogus'.*\['metadata', 'annotated', 'both'\]"):
        DataConfig(instructions="bogus")


def test_step_instructions_must_match_the_steps():
    ep = episode(ramp(5, LEGS, 0.05))
    with pytest.raises(DataError, match="step_instructions must be 5 non-empty strings"):
        Episode(**{**ep.__dict__, "step_instructions": ["walk"] * 4})


def test_datamodule_annotates_the_episodes(tmp_path):
    make_isaac_dataset(tmp_path, n_episodes=4, steps=8)
    module = VLADataModule(DataConfig(format="isaac", root=str(tmp_path), instructions="annotated"))
    module.prepare()
    for ep in module.train_episodes + module.val_episodes:
        assert len(ep.step_instructions) == 8 and all(ep.instruction in text for text in ep.step_instructions)


def _walk_then_hold(episode_dir: Path) -> None:
    """Replace a factory episode's actions: the legs move 0.05 rad/step for 10 steps, then nothing does."""
    data = dict(np.load(episode_dir / "episode_data.npz"))
    data["actions"] = ramp(len(data["actions"]), LEGS, 0.05, stop=10)
    np.savez(episode_dir / "episode_data.npz", **data)


@pytest.mark.parametrize("mode", ["metadata", "annotated"])
def test_training_prompts_carry_the_step_instruction(tmp_path, mode):
    """data.instructions reaches the token ids the model trains on, step by step."""
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    for episode_dir in make_isaac_dataset(tmp_path / "data", n_episodes=3, steps=20):
        _walk_then_hold(episode_dir)
    cfg = DataConfig(format="isaac", root=str(tmp_path / "data"), instructions=mode, val_fraction=0.3)
    module = VLADataModule(cfg, cache_dir=tmp_path / "cache")
    stats = module.prepare()
    model = build_tiny_model(TinyArchitecture(image_size=28), norm_stats=stats)
    module.attach(model)
    module.setup("fit")
    tokenizer = model.processor.tokenizer
    empty = tokenizer.convert_tokens_to_ids("\u2581")

    def prompt_ids(instruction: str) -> list[int]:
        # OpenVLA's prompt, written out here; the bare "▁" before the actions as in OpenVLA's predict.
        ids = tokenizer(f"In: What action should the robot take to {instruction.lower()}?\nOut:")["input_ids"]
        return ids if ids[-1] == empty else [*ids, empty]

    action_dim = module.train_episodes[0].action_dim
    checked = {"walking": 0, "idle": 0}
    for i in range(len(module.train_set)):
        sample = module.train_set[i]
        prompt = sample["input_ids"][: -(action_dim + 1)].tolist()  # then D action tokens and </s>
        task = module.train_episodes[sample["episode"]].instruction
        assert task.startswith("pick up the cube")  # the factory's metadata instruction
        if mode == "metadata":
            assert prompt == prompt_ids(task)
            continue
        # Steps 2-7: the legs clearly move (the 5-step window lies inside the motion); 14 on: still.
        phase = "walking" if 2 <= sample["step"] <= 7 else "idle" if sample["step"] >= 14 else None
        if phase is not None:
            assert prompt in [prompt_ids(t.format(task=task)) for t in TEMPLATES[phase]]
            assert prompt != prompt_ids(task)
            checked[phase] += 1
    if mode == "annotated":
        assert checked == {"walking": 2 * 6, "idle": 2 * 6}  # two train episodes
