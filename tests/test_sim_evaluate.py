"""Closed-loop evaluation: the policy protocol (single actions and chunks), baselines, reports, errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest

from tests.conftest import compose_config, load_script
from vla.config import TASK_NAMES, ConfigError, EvalSettings, EvaluateConfig, SimSettings, to_settings
from vla.sim.athena import HOME_POSE, AthenaRobot
from vla.sim.evaluate import check_actions, evaluate_policy, evaluate_with_baselines
from vla.sim.tasks import EPISODE_SECONDS, PHRASINGS

SIM = SimSettings(image_size=64)


@pytest.fixture(scope="module")
def robot():
    with AthenaRobot(SIM) as robot:
        yield robot


def settings(**changes) -> EvalSettings:
    return EvalSettings(**{"episodes_per_task": 3, "sim": SIM, "gif_episodes": 0, **changes})


def test_expert_succeeds_and_random_fails(robot):
    expert = evaluate_policy("expert", settings(), robot=robot)
    assert expert["success_rate"] == 1.0 and expert["episodes"] == 12
    assert sum(expert["interventions"].values()) == 0
    # Each episode's final hand-to-ball distance is reported; the expert's are inside the success radius.
    from vla.sim.tasks import REACH_RADIUS

    assert max(expert["per_task"]["reach_ball"]["final_values"]) <= REACH_RADIUS
    random = evaluate_policy("random", settings(), robot=robot)
    assert random["success_rate"] == 0.0
    assert len(random["per_task"]["reach_ball"]["final_values"]) == 3
    assert random["interventions"]["speed"] > 0  # random targets jump: the filter works for its living


class RecordingPolicy:
    """Holds the home pose in chunks of `chunk`; records what it was given."""

    def __init__(self, chunk: int | None, dims: int = 23):
        self.chunk, self.dims, self.calls = chunk, dims, []

    def __call__(self, images, instructions):
        self.calls.append((images, instructions))
        actions = (
            np.tile(HOME_POSE[: self.dims], (len(images), 1))
            if self.dims <= 23
            else np.zeros((len(images), self.dims))
        )
        return actions if self.chunk is None else np.repeat(actions[:, None], self.chunk, axis=1)


@pytest.mark.parametrize("chunk", [None, 1, 8])
def test_policy_protocol_and_action_chunks(robot, chunk):
    policy = RecordingPolicy(chunk)
    result = evaluate_policy(
        policy, settings(tasks=["turn_torso", "reach_ball"], episodes_per_task=2), robot=robot
    )
    assert result["success_rate"] == 0.0  # holding still completes no task
    # Whole chunks are executed before the next query: ceil(steps / K) calls per task.
    steps = [round(EPISODE_SECONDS[t] * 25) for t in ("turn_torso", "reach_ball")]
    assert len(policy.calls) == sum(math.ceil(n / (chunk or 1)) for n in steps)
    images, instructions = policy.calls[0]
    assert len(images) == 2 and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    assert all(
        any(text == p.format(side=s, color=None) for p in PHRASINGS["turn_torso"] for s in ("left", "right"))
        for text in instructions
    )
    _, reach_instructions = policy.calls[-1]
    assert all("ball" in text for text in reach_instructions)


@pytest.mark.parametrize("execute", [1, 3])
def test_execute_steps_re_queries_after_that_many_chunk_steps(robot, execute):
    """`execute_steps=N` runs the first N steps of each 8-step chunk, then asks again: ceil(steps / N)
    queries per task instead of ceil(steps / 8)."""
    policy = RecordingPolicy(8)
    evaluate_policy(
        policy, settings(tasks=["turn_torso"], episodes_per_task=1, execute_steps=execute), robot=robot
    )
    assert len(policy.calls) == math.ceil(round(EPISODE_SECONDS["turn_torso"] * 25) / execute)
    with pytest.raises(ConfigError, match=r"execute_steps=0 must be >= 1"):
        settings(execute_steps=0)


def test_a_policy_that_copies_the_expert_through_images_scores_like_it(robot):
    """The harness executes what the policy returns: replaying the expert's plan succeeds."""
    from vla.sim.tasks import expert_action, sample_episode

    plans, step = {}, {}

    def policy(images, instructions):
        out = []
        for i, _ in enumerate(images):
            spec = plans[i]
            out.append([expert_action(spec, step[i] + k) for k in range(5)])
            step[i] += 5
        return np.array(out)

    config = settings(tasks=["raise_arm"], episodes_per_task=2)
    for i in range(2):
        plans[i], step[i] = sample_episode(robot, "raise_arm", config.seed + i), 0
    assert evaluate_policy(policy, config, robot=robot)["success_rate"] == 1.0


def test_named_ball_rate_tells_the_wrong_ball_from_a_near_miss(robot):
    """Two failing policies on a held-out scene where the named hand can reach a distractor: one reaches
    the distractor, one stops 11 cm from the named ball (outside the 8 cm radius) on the side away from
    the other balls. Both fail; only the first went for the wrong ball."""

    from vla.sim.tasks import REACH_RADIUS, expert_action, sample_episode, solve_reach_ik

    def reachable(spec, point):
        goal, error = solve_reach_ik(robot, spec.side, point)
        return goal if error < 0.01 else None

    for seed in range(1_000_000, 1_000_100):
        spec = sample_episode(robot, "reach_ball", seed)
        target = spec.balls[spec.color]
        rivals = [p for c, p in spec.balls.items() if c != spec.color]
        wrong = next((g for g in (reachable(spec, p) for p in rivals) if g is not None), None)
        away = target - min(rivals, key=lambda p: np.linalg.norm(p - target))
        miss_point = target + 0.11 * away / np.linalg.norm(away)
        miss = reachable(spec, miss_point)
        # By construction the miss point is outside the radius and still nearest the named ball.
        if (
            wrong is not None
            and miss is not None
            and min(np.linalg.norm(miss_point - p) for p in rivals) > 0.13
        ):
            break
    else:
        pytest.fail("no held-out scene with a reachable distractor in 100 seeds")

    def replay(goal):
        plan, step = replace(spec, goal=goal), [0]

        def policy(images, instructions):
            chunk = [expert_action(plan, step[0] + k) for k in range(5)]
            step[0] += 5
            return np.array([chunk])

        return policy

    config = settings(tasks=["reach_ball"], episodes_per_task=1, seed=seed)
    to_wrong = evaluate_policy(replay(wrong), config, robot=robot)["per_task"]["reach_ball"]
    near_miss = evaluate_policy(replay(miss), config, robot=robot)["per_task"]["reach_ball"]
    assert to_wrong["success_rate"] == 0.0 and to_wrong["named_ball_rate"] == 0.0
    assert near_miss["success_rate"] == 0.0 and near_miss["named_ball_rate"] == 1.0
    assert REACH_RADIUS < near_miss["final_values"][0] < 0.13


def test_swap_color_tells_a_policy_that_follows_the_colour_word_from_one_that_ignores_it(robot):
    """The language probe on two held-out scenes whose nearest distractor the named hand can reach: a
    policy that reaches the ball its instruction names ends at the distractor (named ball 0%), one that
    goes to the named ball whatever it is told keeps 100%; without the swap both score 100%."""
    import re

    from vla.sim.athena import BALL_COLORS
    from vla.sim.tasks import expert_action, sample_episode, solve_reach_ik, swapped_color_instruction

    def color_in(text: str) -> str:
        (color,) = [c for c in BALL_COLORS if re.search(rf"\b{c}\b", text)]
        return color

    def usable(seed: int):
        spec = sample_episode(robot, "reach_ball", seed)
        told = swapped_color_instruction(spec)
        rival = color_in(told)
        distances = {
            c: np.linalg.norm(p - spec.balls[spec.color]) for c, p in spec.balls.items() if c != spec.color
        }
        assert rival == min(distances, key=distances.get)  # the nearest distractor's colour
        assert told == re.sub(rf"\b{spec.color}\b", rival, spec.instruction)
        return spec if solve_reach_ik(robot, spec.side, spec.balls[rival])[1] < 0.01 else None

    for first in range(1_000_000, 1_000_200):
        specs = [usable(first), usable(first + 1)]
        if all(specs):
            break
    else:
        pytest.fail("no two consecutive held-out scenes with a reachable nearest distractor")

    def reacher(follows_words: bool):
        steps = [0, 0]

        def policy(images, instructions):
            chunks = []
            for i, text in enumerate(instructions):
                spec = specs[i]
                color = color_in(text) if follows_words else spec.color
                plan = replace(spec, goal=solve_reach_ik(robot, spec.side, spec.balls[color])[0])
                chunks.append([expert_action(plan, steps[i] + k) for k in range(5)])
                steps[i] += 5
            return np.array(chunks)

        return policy

    def named(follows_words: bool, swap: bool) -> float:
        config = settings(tasks=["reach_ball"], episodes_per_task=2, seed=first, swap_color=swap)
        report = evaluate_policy(reacher(follows_words), config, robot=robot)
        return report["per_task"]["reach_ball"]["named_ball_rate"]

    assert named(follows_words=True, swap=False) == 1.0 and named(follows_words=False, swap=False) == 1.0
    assert named(follows_words=True, swap=True) == 0.0
    assert named(follows_words=False, swap=True) == 1.0


def test_wrong_action_size_names_both_sizes(robot):
    with pytest.raises(ValueError, match=r"7-dimensional actions but the athena robot has 23"):
        evaluate_policy(
            RecordingPolicy(None, dims=7), settings(tasks=["turn_torso"], episodes_per_task=1), robot=robot
        )
    with pytest.raises(ValueError, match=r"30-dimensional .* has 23"):
        check_actions(np.zeros((2, 4, 30)), batch=2)
    with pytest.raises(ValueError, match=r"expected \[2, 23\]"):
        check_actions(np.zeros((3, 23)), batch=2)


def test_reports_and_gifs(tmp_path):
    config = settings(tasks=["lift_knee", "raise_arm"], episodes_per_task=2, gif_episodes=2)
    report = evaluate_with_baselines(RecordingPolicy(4), config, tmp_path, name="model", progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["results"]["expert"]["success_rate"] == 1.0 and set(saved["results"]) == {
        "model",
        "expert",
        "random",
    }
    assert saved == json.loads(json.dumps(report))
    table = (tmp_path / "eval.md").read_text()
    assert "| lift_knee | 0% (0/2) [0%-66%] | 100% (2/2) [34%-100%] | 0% (0/2) [0%-66%] |" in table
    assert "**overall**" in table and saved["results"]["expert"]["per_task"]["lift_knee"]["ci95"][0] > 0.3
    assert "named ball" not in table  # no reach_ball here: no named-ball row
    assert saved["swap_color"] is False and "language probe" not in table
    # Two rollouts side by side; Pillow merges identical consecutive frames, so count only moving ones.
    assert iio.imread(tmp_path / "gifs" / "model" / "lift_knee.gif", index=None).shape[1:3] == (64, 128)
    expert_gif = iio.imread(tmp_path / "gifs" / "expert" / "raise_arm.gif", index=None)
    assert 30 <= expert_gif.shape[0] <= round(EPISODE_SECONDS["raise_arm"] * 25)
    assert expert_gif[-1, :, :3, 1].mean() > 150  # green border: success


def test_evaluate_script_runs_baselines(tmp_path):
    script = load_script("evaluate")
    cfg = to_settings(
        {
            "checkpoint": None,
            "tasks": ["turn_torso"],
            "episodes_per_task": 2,
            "gif_episodes": 1,
            "data": {"sample": {"image_size": 64}},  # the scene of checkpoints other than sample runs
        },
        EvaluateConfig,
    )
    report = script.run(cfg, tmp_path / "eval")
    assert report["results"]["expert"]["success_rate"] == 1.0
    assert (tmp_path / "eval" / "gifs" / "expert" / "turn_torso.gif").is_file()


def test_wilson_interval_matches_the_textbook_values():
    """95% Wilson score intervals as tabulated (Newcombe 1998, Table I: 0/10, 5/10, 10/10)."""
    from vla.sim.evaluate import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_held_out_seed_check():
    with pytest.raises(ValueError, match="evaluation seeds must be >= 1000000"):
        EvalSettings(seed=5)


@pytest.mark.slow
def test_expert_at_least_95_and_random_under_10_percent_per_task(tmp_path):
    """The issue's bar, on 50 held-out episodes per task; prints the table."""
    report = evaluate_with_baselines(None, settings(episodes_per_task=50), tmp_path, progress=False)
    print((tmp_path / "eval.md").read_text())
    for task in TASK_NAMES:
        assert report["results"]["expert"]["per_task"][task]["success_rate"] >= 0.95, task
        assert report["results"]["random"]["per_task"][task]["success_rate"] < 0.10, task
    assert sum(report["results"]["expert"]["interventions"].values()) == 0


def test_shipped_configs_compose():
    from vla.config import MakeSampleDataConfig, SampleDataConfig

    # The shipped scene: data.sample's camera, size and rate (conf/data/sample.yaml) with the sim group's
    # defaults.
    scene = SimSettings(image_size=SampleDataConfig().image_size, control_hz=5, camera="upper_body")
    data = compose_config("make_sample_data", schema=MakeSampleDataConfig)
    generated = data.data.sample.generation_settings(data.sim)
    assert generated.sim == scene and generated.tasks == list(TASK_NAMES)
    evaluate = compose_config("evaluate", ["checkpoint=null"], EvaluateConfig)
    assert evaluate.settings().sim == scene and evaluate.seed == 1_000_000
    assert evaluate.tasks == list(TASK_NAMES)
    # Without checkpoint= the latest training run is evaluated (vla.outputs.resolve_latest).
    assert compose_config("evaluate", schema=EvaluateConfig).checkpoint == "latest"


def test_log_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from vla.sim.evaluate import log_to_wandb

    config = settings(tasks=["turn_torso"], episodes_per_task=1, gif_episodes=1, baselines=["expert"])
    report = evaluate_with_baselines(None, config, tmp_path, progress=False)
    run = wandb.init(project="athena-vla-test", dir=str(tmp_path))
    try:
        log_to_wandb(report, tmp_path)
        assert run.summary["eval/expert/success_rate/turn_torso"] == 1.0
        # The language probe's numbers are not the ordinary evaluation's.
        config = settings(tasks=["reach_ball"], episodes_per_task=1, gif_episodes=0, baselines=["expert"])
        probe = evaluate_with_baselines(
            None, replace(config, swap_color=True), tmp_path / "probe", progress=False
        )
        log_to_wandb(probe, tmp_path / "probe")
        assert run.summary["eval_swap_color/expert/named_ball_rate/reach_ball"] == 1.0
        assert run.summary.get("eval/expert/named_ball_rate/reach_ball") is None
    finally:
        wandb.finish()
