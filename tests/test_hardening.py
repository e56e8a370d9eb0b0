"""Issue 21, training side: config values refused at start-up by key, run folders that cannot collide,
checkpoints checked before a resume (and refused naming the path and what to do), resume exact with
LoRA dropout, a full disk leaving no temporary folder. Each test failed on the code before the issue."""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from data_factories import make_isaac_dataset
from test_train import config, train  # the same fast training settings

from vla.config import ConfigError
from vla.data.episodes import DataError
from vla.model.configuration import CheckpointError


@pytest.fixture(scope="module")
def isaac_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isaac")
    make_isaac_dataset(root, n_episodes=4, steps=6)
    return root


# -- config values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.val_check_interval=0", "trainer.val_check_interval=0"),  # ZeroDivisionError in the loop
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),  # same
        ("trainer.max_steps=0", "trainer.max_steps=0"),  # wrote an untrained adapter, exit 0
        ("trainer.max_steps=-1", "trainer.max_steps=-1"),  # trained forever
        ("optim.lr=-1", "optim.lr=-1"),  # failed inside torch without the key
        ("optim.lr=nan", "optim.lr=nan"),
        ("data.batch_size=0", "data.batch_size=0"),  # caught by torch after base_model/ was written
        ("data.val_fraction=1.0", "data.val_fraction=1.0"),
        ("optim.warmup_steps=-5", "optim.warmup_steps=-5"),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0"),
        ("callbacks.save_top_k=-2", "callbacks.save_top_k=-2"),
        ("trainer.val_check_interval=10", "trainer.val_check_interval=10 is more than trainer.max_steps=2"),
    ],
)
def test_bad_config_values_fail_at_start_up_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config(tmp_path, [override])


# -- instructions against the model's positions ---------------------------------------------------


@pytest.fixture(scope="module")
def isaac_with_a_long_instruction(tmp_path_factory) -> Path:
    """Five episodes, one with 990 characters (under the character cap) that tokenize to about 4,000
    tokens, twice the tiny model's 2,048 positions."""
    import json

    root = tmp_path_factory.mktemp("isaac_long")
    make_isaac_dataset(root, n_episodes=5, steps=6)
    metadata = root / "episode_002" / "metadata.json"
    meta = json.loads(metadata.read_text())
    meta["task_description"] = "\N{ROBOT FACE}" * 990
    metadata.write_text(json.dumps(meta))
    return root


def test_an_instruction_longer_than_the_models_positions_fails_before_training(
    tmp_path, isaac_with_a_long_instruction
):
    """It trained (2 steps took 100 s and 7.6 GB for a longer one) with only transformers' warning."""
    root = isaac_with_a_long_instruction
    with pytest.raises(
        DataError, match=r"episode 'episode_002' .* need \d+ positions; the language model has 2048"
    ):
        train(tmp_path / "run", ["data=isaac", f"data.root={root}", "lora=efficient"])
    assert not (tmp_path / "run" / "base_model").exists()  # refused before the model was built


def test_an_instruction_longer_than_the_models_positions_is_skipped_with_on_error_skip(
    tmp_path, isaac_with_a_long_instruction
):
    from vla.data.datamodule import VLADataModule
    from vla.training.build import prompt_budget

    cfg = config(
        tmp_path / "run", ["data=isaac", f"data.root={isaac_with_a_long_instruction}", "data.on_error=skip"]
    )
    datamodule = VLADataModule.for_run(cfg.data, cfg)
    datamodule.prepare(prompt_budget=prompt_budget(cfg.model))
    used = {e.episode_id for e in [*datamodule.train_episodes, *datamodule.val_episodes]}
    assert used == {"episode_000", "episode_001", "episode_003", "episode_004"}
    assert [s.episode_id for s in datamodule.report.skipped] == ["episode_002"]
    assert "positions" in datamodule.report.skipped[0].reason


# -- run folders -----------------------------------------------------------------------------------


def test_claimed_run_folders_never_collide(tmp_path):
    from vla.training.runs import claim_run_dir

    hydra_dir = tmp_path / "train" / "2025-01-01" / "12-00-00"
    hydra_dir.mkdir(parents=True)  # Hydra made it for both runs started in that second
    first, second, third = (claim_run_dir(hydra_dir) for _ in range(3))
    assert first == hydra_dir
    assert second == hydra_dir.with_name("12-00-00_2") and third == hydra_dir.with_name("12-00-00_3")


def test_a_second_run_into_the_same_folder_writes_elsewhere(tmp_path, isaac_root):
    data = ["data=isaac", f"data.root={isaac_root}", "lora=efficient"]
    train(tmp_path / "run", data)
    adapter = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    config_text = (tmp_path / "run" / "config.yaml").read_text()
    train(tmp_path / "run", [*data, "lora.r=4"])  # same folder: the old code replaced the first's files
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert (tmp_path / "run" / "config.yaml").read_text() == config_text
    assert "r: 4" in (tmp_path / "run_2" / "config.yaml").read_text()


# -- checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, isaac_root) -> Path:
    run_dir = tmp_path_factory.mktemp("lora_run") / "run"
    train(run_dir, ["data=isaac", f"data.root={isaac_root}", "lora=efficient"])
    return run_dir


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated or corrupt"),
        (lambda p: torch.save({"state_dict": {}, "x": Evil()}, p), "refused: loading it would run code"),
        (lambda p: p.write_bytes(pickle.dumps(Evil())), "refused|corrupt"),
    ],
    ids=["empty", "truncated", "malicious", "plain_pickle"],
)
def test_damaged_checkpoint_is_refused_naming_the_path(tmp_path, lora_run, damage, message):
    from vla.training.runs import check_resume

    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "config.yaml").write_text((lora_run / "config.yaml").read_text())
    ckpt = copy / "checkpoints" / "last.ckpt"
    ckpt.write_bytes((lora_run / "checkpoints" / "last.ckpt").read_bytes())
    damage(ckpt)
    cfg = config(tmp_path / "resumed", ["data=isaac", "data.root=x", "lora=efficient"])
    with pytest.raises(CheckpointError, match=rf"{ckpt}.*({message})"):
        check_resume(str(copy), cfg)


@pytest.mark.parametrize(
    "override, key",
    [
        ("lora.alpha=8", "lora.alpha=8.*lora.alpha=16"),
        ("lora.r=4", "lora.r=4.*lora.r=32"),
        ("model.layout.chunk_size=2", "model.layout.chunk_size=2.*model.layout.chunk_size=1"),
        ("lora.use_dora=true", "lora.use_dora=True.*lora.use_dora=False"),
        ("model.action_head=l1", "model.action_head='l1'.*model.action_head='tokens'"),
    ],
)
def test_resume_with_a_setting_that_changes_the_model_is_refused(tmp_path, lora_run, override, key):
    from vla.training.runs import check_resume

    cfg = config(tmp_path / "resumed", ["data=isaac", "data.root=x", "lora=efficient", override])
    with pytest.raises(ConfigError, match=key):
        check_resume(str(lora_run), cfg)
    assert not (tmp_path / "resumed").exists()  # nothing written


def test_full_disk_while_saving_the_adapter_names_the_path_and_leaves_no_temp(tmp_path):
    from vla.training.runs import save_trained

    class FullDisk:
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'adapter'}.*No space left on device.*free"):
        save_trained(FullDisk(), tmp_path, full=False)
    assert list(tmp_path.iterdir()) == []


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"x" * 32  # the JSON header's start, as a bad copy or a disk error leaves it
    path.write_bytes(bytes(data))


SAFETENSORS_WORDING = (
    r"MetadataIncompleteBuffer|HeaderTooLarge|InvalidHeader|incomplete metadata|SafetensorError"
)


@pytest.mark.parametrize("damage", [truncate, overwrite_header, lambda p: p.write_bytes(b"")])
def test_a_damaged_adapter_is_refused_naming_the_file_and_the_way_out(tmp_path, lora_run, damage):
    """PEFT failed with safetensors' own wording, naming no file (load_run, predict, evaluate, export)."""
    import shutil

    from vla.inference import load_policy
    from vla.training.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    damage(weights)
    for load in (load_run, load_policy):
        with pytest.raises(CheckpointError) as err:
            load(run)
        message = str(err.value)
        assert re.search(rf"{weights}: not a complete safetensors file .*ckpt_path={run}", message), message
        assert not re.search(SAFETENSORS_WORDING, message)


@pytest.mark.parametrize("damage", [truncate, overwrite_header])
def test_a_damaged_model_is_refused_naming_the_file_and_the_way_out(tmp_path, lora_run, damage):
    import shutil

    from vla.model.modeling import OpenVLA

    folder = tmp_path / "base_model"
    shutil.copytree(lora_run / "base_model", folder)
    damage(folder / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        OpenVLA.from_pretrained(folder)
    message = str(err.value)
    assert re.search(rf"{folder / 'model.safetensors'}: not a complete .*download the model again", message)
    assert not re.search(SAFETENSORS_WORDING, message)


class FullDiskFile:
    """An open file on a disk that fills up after `room` bytes."""

    def __init__(self, path, mode, room=100):
        self.f, self.room = open(path, mode), room  # noqa: SIM115 - closed by __exit__

    def write(self, data):
        self.f.write(bytes(data)[: self.room])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_while_lightning_writes_a_checkpoint_names_it_and_leaves_no_partial_file(
    tmp_path, monkeypatch, isaac_root
):
    """Lightning's own write failed with `No space left on device` and no path."""
    import vla.training.runs as runs

    monkeypatch.setattr(runs, "open", FullDiskFile, raising=False)
    run_dir = tmp_path / "run"
    with pytest.raises(
        CheckpointError, match=rf"{run_dir / 'checkpoints'}/.*\.ckpt: cannot write .*No space left.*free some"
    ):
        train(run_dir, ["data=isaac", f"data.root={isaac_root}", "lora=efficient"])
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == []


@pytest.mark.parametrize(
    "code, todo",
    [
        (errno.ENOSPC, "No space left on device.*free some space"),
        (errno.EACCES, "Permission denied.*writable"),
    ],
)
def test_a_failed_model_save_names_the_folder_says_what_to_do_and_leaves_no_temp(
    tmp_path, monkeypatch, code, todo
):
    """The merged model's (and lora=full's) save raised the bare OSError."""
    import huggingface_hub

    from vla.model.tiny import build_tiny_model

    def failing(state, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(huggingface_hub, "save_torch_state_dict", failing)
    model = build_tiny_model(config(tmp_path / "unused", []).model.architecture, norm_stats={})
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'model'}: cannot save the model .*{todo}"):
        model.save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


# -- exact resume ----------------------------------------------------------------------------------


class Killed(Exception):
    """Stands for kill -9: the process stops mid-epoch, nothing more is written."""


def train_killed_at(monkeypatch, run_dir: Path, overrides: list[str], step: int) -> None:
    from vla.training.module import VLAModule

    original = VLAModule.training_step

    def dying(self, batch, batch_idx):
        if self.global_step == step:
            raise Killed(f"killed before step {step + 1}")
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(VLAModule, "training_step", dying)
        with pytest.raises(Killed):
            train(run_dir, overrides)


def val_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def check_resume_is_exact(tmp_path, monkeypatch, overrides: list[str], kill_steps: list[int]) -> None:
    whole = val_metrics(train(tmp_path / "whole", overrides))
    previous = None
    for i, step in enumerate(kill_steps):
        run_dir = tmp_path / f"killed_{i}"
        resume = [f"ckpt_path={previous}"] if previous else []
        train_killed_at(monkeypatch, run_dir, [*overrides, *resume], step)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() or previous
        previous = run_dir if (run_dir / "checkpoints" / "last.ckpt").is_file() else previous
    resumed = val_metrics(train(tmp_path / "resumed", [*overrides, f"ckpt_path={previous}"]))
    assert resumed.keys() == whole.keys() and "val/loss" in whole
    for key in whole:
        assert resumed[key] == whole[key], (key, resumed[key], whole[key])


def test_resume_after_a_kill_is_exact_with_lora_dropout_and_token_noise(tmp_path, monkeypatch, isaac_root):
    """lora=humanoid_default has dropout 0.1 and data.token_noise draws from torch's generator too: the
    old checkpoint left that generator out, so val/loss differed in the 5th digit."""
    overrides = [
        "data=isaac",
        f"data.root={isaac_root}",
        "lora=humanoid_default",
        "data.token_noise=0.5",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    ]
    check_resume_is_exact(tmp_path, monkeypatch, overrides, kill_steps=[3])


def test_resume_from_an_end_of_epoch_checkpoint_is_exact(tmp_path, monkeypatch, isaac_root):
    """18 training samples in batches of 6: the checkpoint after step 3 ends epoch 0. The next epoch's
    DataLoader iterator drew its base seed from torch's global generator after that checkpoint was
    saved, so the resumed run's dropout and token noise drew other numbers (val/loss differed in the
    5th digit)."""
    overrides = [
        "data=isaac",
        f"data.root={isaac_root}",
        "lora=humanoid_default",
        "data.token_noise=0.3",
        "data.batch_size=6",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
    ]
    check_resume_is_exact(tmp_path, monkeypatch, overrides, kill_steps=[3])


def test_iterating_the_loaders_leaves_the_global_generator_alone():
    """What a training step draws from (dropout, token noise) must not move when an epoch or a
    validation starts, else the checkpoint's saved state is not the next step's."""
    from vla.data.datamodule import ResumableLoader, ShuffleSampler

    class Indices:  # the sampler yields (epoch, index), as VLADataset takes them
        def __getitem__(self, key):
            return key[1]

    sampler = ShuffleSampler(8, seed=0)
    train_loader = ResumableLoader(Indices(), sampler=sampler, consumed_batches=lambda: 0, batch_size=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first_epoch = [batch.tolist() for batch in train_loader]
    second_epoch = [batch.tolist() for batch in train_loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert first_epoch != second_epoch  # each epoch is shuffled anew (from its own generator)


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["full", "humanoid_default"])
def test_resume_after_three_kills_is_exact(tmp_path, monkeypatch, isaac_root, lora):
    """Killed at three points (just after a checkpoint, mid-interval, across the epoch's end),
    resuming each time from the last run's checkpoint: the final validation metrics are identical."""
    overrides = [
        "data=isaac",
        f"data.root={isaac_root}",
        f"lora={lora}",
        "data.token_noise=0.3",
        "trainer.max_steps=12",
        "trainer.val_check_interval=3",
    ]
    check_resume_is_exact(tmp_path, monkeypatch, overrides, kill_steps=[4, 7, 11])


@pytest.mark.slow
def test_resume_after_three_kills_is_exact_with_augmentation(tmp_path, monkeypatch, isaac_root):
    overrides = [
        "data=isaac",
        f"data.root={isaac_root}",
        "lora=humanoid_default",
        "data.token_noise=0.3",
        "augment=openvla",
        "trainer.max_steps=12",
        "trainer.val_check_interval=3",
    ]
    check_resume_is_exact(tmp_path, monkeypatch, overrides, kill_steps=[4, 7, 11])
