"""train.py end to end on tiny data: every adapter kind, QLoRA, resume, and bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factories import make_isaac_dataset, make_pickle_demos, write_isaac_episode

from tests.conftest import FAST_TRAIN, OPENVLA_LAYOUT, ROOT, compose_config, load_script
from vla.config import ConfigError, TrainConfig
from vla.data.episodes import DataError

FAST = [*OPENVLA_LAYOUT, *FAST_TRAIN]


@pytest.fixture(scope="module")
def isaac_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isaac")
    make_isaac_dataset(root, n_episodes=4, steps=6)
    return root


def config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    return compose_config("train", [*FAST, *overrides, f"run_dir={run_dir}"], TrainConfig)


def train(run_dir: Path, overrides: list[str]) -> dict:
    import train as entry

    return entry.run(config(run_dir, overrides))


@pytest.mark.parametrize("lora", ["humanoid_default", "efficient", "high_performance", "full"])
@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_each_adapter_trains_and_saves(tmp_path, isaac_root, lora, quant):
    if lora == "full" and quant == "nf4":
        pytest.skip("full fine-tuning of a quantized base is rejected (tested in test_config)")
    metrics = train(
        tmp_path, [f"lora={lora}", f"quantization={quant}", "data=isaac", f"data.root={isaac_root}"]
    )
    assert np.isfinite(metrics["val/loss"])
    assert (tmp_path / "dataset_statistics.json").is_file() and (tmp_path / "config.yaml").is_file()
    if lora == "full":
        assert (tmp_path / "model" / "config.json").is_file()
    else:
        from peft import PeftConfig

        assert PeftConfig.from_pretrained(str(tmp_path / "adapter")).r > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_trained_run_loads_and_predicts(tmp_path, isaac_root):
    from vla.training.runs import load_run

    train(tmp_path, ["data=isaac", f"data.root={isaac_root}"])
    model = load_run(tmp_path)
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    pred = model.predict([image], ["reach the red ball with the left hand"])
    assert pred.actions.shape == (1, 23)
    tok = model.action_tokenizer
    assert (pred.token_ids >= tok.first_action_token).all()  # constrained by default for our models


def test_pickle_demos_train(tmp_path):
    path = tmp_path / "demos.pkl"
    make_pickle_demos(path, n_demos=3, n_frames=6)
    metrics = train(tmp_path / "run", ["data=pickle", f"data.root={path}"])
    stats = json.loads((tmp_path / "run" / "dataset_statistics.json").read_text())
    assert np.isfinite(metrics["val/loss"]) and len(stats["athena_teleop"]["action"]["q01"]) > 0


@pytest.mark.parametrize(
    "pipeline", [[], ["augment=openvla", "model.layout.chunk_size=2"]], ids=["plain", "augmented_chunked"]
)
def test_resume_is_exact(tmp_path, isaac_root, pipeline):
    """2 steps, stop, resume to 4 == 4 steps in one go: same batches, optimizer and schedule state.
    (lora=full: no dropout, so no random state outside the checkpoint; augmentation is seeded per
    (seed, epoch, sample), so a resumed epoch sees the same pixels.)"""
    from safetensors.torch import load_file

    data = ["data=isaac", f"data.root={isaac_root}", "lora=full", "trainer.val_check_interval=2", *pipeline]
    train(tmp_path / "whole", [*data, "trainer.max_steps=4"])
    train(tmp_path / "first", [*data, "trainer.max_steps=2"])
    train(tmp_path / "resumed", [*data, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'first'}"])
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    first = load_file(str(tmp_path / "first" / "model" / "model.safetensors"))
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first[key], whole[key])  # the last two steps did change the weights
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=1e-6, msg=name)


def test_a_checkpoint_that_also_holds_the_unused_tower_parts_resumes(tmp_path, isaac_root):
    """Checkpoints of earlier versions trained (without effect) the towers' last block, norm and pool
    head, so they hold them: such a checkpoint still resumes; the parts stay frozen at their values."""
    from safetensors.torch import load_file

    data = ["data=isaac", f"data.root={isaac_root}", "lora=full"]
    train(tmp_path / "first", [*data, "trainer.max_steps=2"])
    path = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    saved = load_file(str(tmp_path / "first" / "model" / "model.safetensors"))
    unused = {k: v for k, v in saved.items() if ".blocks.2." in k or "attn_pool" in k}
    assert unused and not any(f"model.{k}" in ckpt["state_dict"] for k in unused)
    ckpt["state_dict"].update({f"model.{k}": v + 1.0 for k, v in unused.items()})  # an earlier version's
    torch.save(ckpt, path)
    train(tmp_path / "resumed", [*data, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'first'}"])
    resumed = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    for k, v in unused.items():  # loaded from the checkpoint, not trained further
        torch.testing.assert_close(resumed[k], v + 1.0, rtol=0, atol=0, msg=k)


def test_lora_checkpoint_holds_only_the_adapter_and_resumes(tmp_path, isaac_root):
    """The frozen base is rebuilt on resume, so Lightning's checkpoint keeps the trainable tensors only;
    a resume with other adapter settings fails naming the mismatch instead of training from scratch."""
    data = ["data=isaac", f"data.root={isaac_root}", "lora=efficient"]
    train(tmp_path / "first", [*data, "trainer.max_steps=2"])
    ckpt = torch.load(
        tmp_path / "first" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    names = list(ckpt["state_dict"])
    # efficient: r=32 on q, v, up, down of each of the 2 layers, an A and a B matrix each.
    assert len(names) == 2 * 4 * 2 and all(".lora_A." in n or ".lora_B." in n for n in names)
    resumed = train(tmp_path / "resumed", [*data, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'first'}"])
    assert np.isfinite(resumed["val/loss"])
    # Refused before anything is built, naming the first key that differs (check_resume).
    with pytest.raises(ConfigError, match=r"lora\.r=64: the run resumed from .* was trained with lora\.r=32"):
        train(
            tmp_path / "other",
            [*data, "lora=humanoid_default", "trainer.max_steps=4", f"ckpt_path={tmp_path / 'first'}"],
        )


def test_action_dim_must_match_the_resumed_run_and_a_pretrained_fine_tune(tmp_path, isaac_root):
    """Data with another action size cannot continue a run, nor fine-tune a model whose statistics
    under the same dataset key decode a different number of action tokens."""
    from data_factories import ACTION_DIM

    wider = tmp_path / "wider"
    make_isaac_dataset(wider, n_episodes=4, steps=6, action_dim=ACTION_DIM + 2)
    train(tmp_path / "first", ["data=isaac", f"data.root={isaac_root}", "lora=full"])
    with pytest.raises(DataError, match=rf"episode_000.*action dimension {ACTION_DIM + 2}.*{ACTION_DIM}"):
        train(
            tmp_path / "resumed",
            ["data=isaac", f"data.root={wider}", "lora=full", f"ckpt_path={tmp_path / 'first'}"],
        )
    model_dir = tmp_path / "first" / "model"  # lora=full saves an OpenVLA folder with the run's norm_stats
    key = config(tmp_path / "finetune", ["data=isaac", f"data.root={wider}"]).data.dataset_key
    with pytest.raises(
        ConfigError,
        match=rf"data.dataset_key='{key}': .*norm_stats\['{key}'\].* {ACTION_DIM}-dimensional actions, "
        rf"this data's actions have {ACTION_DIM + 2}.*data.dataset_key=<new name>",
    ):
        train(tmp_path / "finetune", ["data=isaac", f"data.root={wider}", f"model.pretrained={model_dir}"])
    # Under another dataset key the statistics are new, so any action size is fine.
    metrics = train(
        tmp_path / "other_key",
        ["data=isaac", f"data.root={wider}", f"model.pretrained={model_dir}", "data.dataset_key=wider_robot"],
    )
    assert np.isfinite(metrics["val/loss"])


def test_tensorboard_logger_and_run_files(tmp_path, isaac_root):
    """logger=tensorboard writes event files into the run folder; the run's folders are not private
    and its adapter names its base (the tiny base the run saved)."""
    train(tmp_path, ["data=isaac", f"data.root={isaac_root}", "logger=tensorboard"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    mask = os.umask(0)
    os.umask(mask)
    for folder in ("adapter", "base_model"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o777 & ~mask, folder
        assert {f.stat().st_mode & 0o777 for f in (tmp_path / folder).iterdir()} == {0o666 & ~mask}, folder
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((tmp_path / "base_model").resolve())


def test_unknown_lora_target_fails_before_training(tmp_path, isaac_root):
    with pytest.raises(ConfigError, match=r"\['qkv_projj'\] match no module"):
        train(tmp_path, ["data=isaac", f"data.root={isaac_root}", "lora.target_modules=[qkv_projj]"])


def test_bad_episode_is_named_and_skip_reports_it(tmp_path):
    root = tmp_path / "data"
    make_isaac_dataset(root, n_episodes=4, steps=6)
    bad = sorted(root.iterdir())[1]
    data = dict(np.load(bad / "episode_data.npz"))
    data["actions"][2, 3] = np.nan
    np.savez(bad / "episode_data.npz", **data)
    with pytest.raises(DataError, match=bad.name):
        train(tmp_path / "run1", ["data=isaac", f"data.root={root}"])
    metrics = train(tmp_path / "run2", ["data=isaac", f"data.root={root}", "data.on_error=skip"])
    assert np.isfinite(metrics["val/loss"])


def test_filter_counts_reach_the_logger_and_the_log(tmp_path, caplog):
    """Each rule's drops are counted into the run's logger (CSV here; W&B gets the same log_metrics
    call) at step 0, and the filter's summary and every drop with its reason are logged."""
    import csv
    import logging

    root = tmp_path / "data"
    make_isaac_dataset(root, n_episodes=4, steps=6)
    write_isaac_episode(root / "episode_004", steps=3, seed=4)  # too_short: 3 < min_length 5
    write_isaac_episode(root / "episode_005", steps=6, seed=5)
    data = dict(np.load(root / "episode_005" / "episode_data.npz"))
    data["states"][:] = 0.25  # static: the robot never moves
    np.savez(root / "episode_005" / "episode_data.npz", **data)

    with caplog.at_level(logging.INFO, logger="vla.data.quality"):
        train(tmp_path / "run", ["data=isaac", f"data.root={root}", "logger=csv"])
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    [counts] = [row for row in rows if row.get("data/kept")]
    expected = {"episodes": 6, "kept": 4, "dropped": 2, "dropped/too_short": 1, "dropped/static": 1}
    expected.update({f"dropped/{rule}": 0 for rule in ("non_finite", "unsuccessful", "too_long")})
    assert {key: float(counts[f"data/{key}"]) for key in expected} == expected
    assert float(counts["data/skipped"]) == 0 and float(counts["step"]) == 0
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vla.data.quality"]
    assert (logging.INFO, "quality filter: kept 4 of 6 episodes (non_finite 0, unsuccessful 0, "
            "too_short 1, too_long 0, static 1)") in messages  # fmt: skip
    assert any("episode_004 (too_short): 3 steps" in m for _, m in messages)
    assert any("episode_005 (static): mean state variance 0" in m for _, m in messages)


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"instruction": "x", "frames": [Evil()]}]))
    with pytest.raises(DataError, match="forbidden global"):
        train(tmp_path / "run", ["data=pickle", f"data.root={path}"])
    assert not marker.exists()


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        train(tmp_path / "run", ["data=isaac", f"data.root={tmp_path / 'empty'}"])


def test_cli_multirun_two_jobs(tmp_path, isaac_root):
    out = _cli(["-m", "lora=efficient,full", "data=isaac", f"data.root={isaac_root}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list(tmp_path.rglob("adapter/adapter_config.json"))) == 1  # efficient
    assert len(list(tmp_path.rglob("model/config.json"))) == 1  # full


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags, overrides = [a for a in args if a.startswith("-")], [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "train.py", *flags, *FAST, *overrides, f"paths.output_dir={tmp_path}"]  # args win
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_optuna_search_two_trials(tmp_path, isaac_root):
    out = _cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "data=isaac",
                f"data.root={isaac_root}"], tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = list(tmp_path.rglob("optimization_results.yaml"))
    assert len(results) == 1 and "best_value" in results[0].read_text()
    assert len(list(tmp_path.rglob("adapter/adapter_config.json"))) == 2


# The default's model (continuous head, state, FiLM) trained in full: DDP needs a gradient for every
# trainable weight, so the towers' unused last block and the unused lm_head must be frozen.
DEFAULT_HEAD_FULL = ["model.action_head=l1", "model.proprio=true", "model.film=true",
                     "model.layout.chunk_size=2", "model.layout.chunk_positions=steps", "lora=full"]  # fmt: skip


@pytest.mark.slow  # two processes each importing the stack (30 s); DDP itself is Lightning's
@pytest.mark.parametrize(
    ("extra", "saved"), [([], "adapter/adapter_config.json"), (DEFAULT_HEAD_FULL, "model/config.json")]
)
def test_ddp_two_processes_on_cpu(tmp_path, isaac_root, extra, saved):
    out = _cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=isaac",
                f"data.root={isaac_root}", *extra], tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distributed_backend=gloo" in out.stdout + out.stderr
    assert len(list(tmp_path.rglob(saved))) == 1


def test_evaluate_script_on_a_training_run(tmp_path, isaac_root):
    """scripts/evaluate.py takes a training run folder (base + adapter) and runs it closed loop."""
    from vla.config import EvaluateConfig, to_settings

    train(tmp_path / "run", ["data=isaac", f"data.root={isaac_root}"])
    script = load_script("evaluate")
    # An Isaac run is evaluated in the composed data.sample's scene.
    settings = {"checkpoint": str(tmp_path / "run"), "tasks": ["turn_torso"], "episodes_per_task": 1,
                "gif_episodes": 1, "baselines": ["random"], "data": {"sample": {"image_size": 64}}}  # fmt: skip
    report = script.run(to_settings(settings, EvaluateConfig), tmp_path / "eval")
    assert set(report["results"]) == {"model", "random"}
    assert 0.0 <= report["results"]["model"]["success_rate"] <= 1.0
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "eval" / "eval.md").is_file()
    assert (tmp_path / "eval" / "gifs" / "model" / "turn_torso.gif").is_file()


def test_evaluate_uses_the_rate_and_camera_a_sample_run_was_trained_at(tmp_path):
    """A run trained on 25 Hz front-camera sample data is evaluated at 25 Hz with that camera and image
    size (its own data.sample), not in the composed scene (5 Hz, upper_body: its single actions would
    span 5x the time); runs on other data, and the baselines alone, are evaluated in the composed
    data.sample's scene."""
    from omegaconf import OmegaConf

    from vla.config import EvaluateConfig

    script = load_script("evaluate")

    def evaluation(data: dict | None) -> tuple[int, int, str]:
        checkpoint = None
        if data is not None:
            saved = OmegaConf.merge(
                OmegaConf.structured(TrainConfig), {"run_dir": str(tmp_path), "data": data}
            )
            (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))  # as a run saves it
            checkpoint = str(tmp_path)
        overrides = [f"checkpoint={checkpoint or 'null'}", "data.sample.image_size=224"]
        cfg = compose_config("evaluate", overrides, EvaluateConfig)
        sim = cfg.settings(script.trained_scene(checkpoint, cfg.data.sample)).sim
        return sim.image_size, sim.control_hz, sim.camera

    sample = {"format": "sample", "sample": {"image_size": 96, "control_hz": 25, "camera": "front"}}
    assert evaluation(sample) == (96, 25, "front")
    assert evaluation({"format": "isaac", "root": "/data"}) == (224, 5, "upper_body")
    assert evaluation(None) == (224, 5, "upper_body")


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_gradient_checkpointing_trains(tmp_path, isaac_root, quant):
    metrics = train(tmp_path, ["data=isaac", f"data.root={isaac_root}", "lora=efficient", f"quantization={quant}",
                               "model.gradient_checkpointing=true"])  # fmt: skip
    assert np.isfinite(metrics["val/loss"]) and np.isfinite(metrics["train/loss"])


@pytest.mark.parametrize("quant", [None, "nf4"])
def test_gradient_checkpointing_is_switched_on(quant):
    from vla.config import LoraConfig
    from vla.model.quantize import quantize_language_model
    from vla.model.tiny import TinyArchitecture, build_tiny_model
    from vla.training.adapters import apply_adapter

    base = build_tiny_model(TinyArchitecture(image_size=28))
    if quant:
        quantize_language_model(base, quant, compute_dtype=torch.float32)
    assert not base.language_model.is_gradient_checkpointing
    apply_adapter(
        base, LoraConfig(name="efficient", r=4, target_modules=["q_proj"]), gradient_checkpointing=True
    )
    assert base.language_model.is_gradient_checkpointing


def test_ema_weights_are_saved_and_a_resumed_run_is_the_same_run(tmp_path, isaac_root):
    """optim.ema_decay: the saved model and the checkpoint's state_dict are the average, not the last
    step's weights (kept as current_model_state for resuming), and 2 steps + resume to 4 == 4 steps,
    average included."""
    from safetensors.torch import load_file

    data = ["data=isaac", f"data.root={isaac_root}", "lora=full", "trainer.val_check_interval=2"]
    ema = [*data, "optim.ema_decay=0.9", "optim.lr=1e-2"]
    train(tmp_path / "whole", [*ema, "trainer.max_steps=4"])
    train(tmp_path / "first", [*ema, "trainer.max_steps=2"])
    train(tmp_path / "resumed", [*ema, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'first'}"])
    train(tmp_path / "plain", [*data, "optim.lr=1e-2", "trainer.max_steps=4"])
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    ckpt = torch.load(
        tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    averaged, current = ckpt["state_dict"][f"model.{key}"], ckpt["current_model_state"][f"model.{key}"]
    torch.testing.assert_close(whole[key], averaged, rtol=0, atol=0)
    torch.testing.assert_close(plain[key], current, rtol=0, atol=0)  # EMA does not change training
    assert (whole[key] - plain[key]).abs().max() > 1e-4  # the average is not the last step's weights
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=1e-6, msg=name)


def test_ema_update_forgets_the_initial_weights():
    """The decay warms up as min(decay, (1 + n) / (10 + n)): after the first copy, the n-th update
    keeps that share of the average."""
    from vla.training.callbacks import EMAWeights

    ema = EMAWeights(0.999)
    average, current = [torch.zeros(3)], [torch.ones(3)]
    ema._update(average, current, 1)  # decay 2/11: the average moves 9/11 of the way
    torch.testing.assert_close(average[0], torch.full((3,), 9 / 11))
    average = [torch.zeros(3)]
    ema._update(average, current, 10_000)  # warmed up: decay 0.999
    torch.testing.assert_close(average[0], torch.full((3,), 1e-3))
    counts = [torch.tensor([1, 2])]
    ema._update(counts, [torch.tensor([5, 6])], 3)  # integer buffers take the latest value
    assert counts[0].tolist() == [5, 6]


def test_fused_adamw_only_where_lightning_clips_it():
    """The fused AdamW kernel is the same update in one call; Lightning's mixed-precision plugin refuses
    to clip gradients of a fused optimizer, so `*-mixed` runs (the GPU configs) keep the loop."""
    from vla.training.module import fused_adamw_supported

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_adamw_supported(params, "32-true")
    assert not fused_adamw_supported(params, "bf16-mixed") and not fused_adamw_supported(params, "16-mixed")
    assert not fused_adamw_supported([torch.nn.Parameter(torch.zeros(3, device="meta"))], "32-true")


@pytest.mark.slow  # a 2-step run in bf16 autocast on the CPU
def test_mixed_precision_run_clips_gradients(tmp_path, isaac_root):
    """trainer.precision=bf16-mixed with the default gradient clipping trains (the optimizer is not fused)."""
    metrics = train(
        tmp_path, ["data=isaac", f"data.root={isaac_root}", "lora=full", "trainer.precision=bf16-mixed"]
    )
    assert np.isfinite(metrics["val/loss"])
