"""scripts/inspect_data.py on a tiny generated dataset: the printed summary, the report and both PNGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_factories import make_isaac_dataset, write_isaac_episode
from PIL import Image

from tests.conftest import ROOT, compose_config
from vla.config import ConfigError, InspectDataConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect_data")
    make_isaac_dataset(root, n_episodes=4, steps=8)
    write_isaac_episode(root / "episode_004", steps=3, seed=4)  # dropped by the default min_length=5
    return root


def config(run_dir: Path, overrides: list[str]) -> InspectDataConfig:
    return compose_config("inspect_data", [*overrides, f"run_dir={run_dir}"], InspectDataConfig)


def run(run_dir: Path, overrides: list[str]) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import inspect_data

    return inspect_data.run(config(run_dir, overrides))


def test_inspect_reports_counts_filter_and_writes_both_pngs(tmp_path, dataset, capsys):
    result = run(tmp_path, ["data=isaac", f"data.root={dataset}", "sheet_frames=6", "plot_episodes=2"])
    out = capsys.readouterr().out

    assert result["episodes"] == 4 and result["steps"] == 32 and result["loaded"] == 5
    assert result["filter"]["dropped/too_short"] == 1 and result["filter"]["kept"] == 4
    assert "dropped episode_004: too_short: 3 steps < data.filter.min_length=5" in out
    # make_isaac_dataset's instruction is "pick up the cube {seed}": one per episode, 8 steps each.
    assert result["instructions"] == {f"pick up the cube {i}": 8 for i in range(4)}
    rows = [line.split() for line in out.splitlines() if line.startswith(("action ", "state "))]
    assert len(rows) == 23 + 47  # one table row per action and state dimension
    assert rows[0][:2] == ["action", "a0"] and rows[-1][:2] == ["state", "s46"] and len(rows[0]) == 8
    for key in ("frames_png", "actions_png"):
        path = Path(result[key])
        assert path.parent == tmp_path
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_annotated_instructions_are_counted_per_step(tmp_path, dataset):
    result = run(tmp_path, ["data=isaac", f"data.root={dataset}", "data.instructions=annotated"])
    from vla.data.annotate import TEMPLATES

    assert sum(result["instructions"].values()) == 32
    # The factory's actions are random normals: every group moves at every step, so all are "combined".
    combined = {t.format(task=f"pick up the cube {i}") for t in TEMPLATES["combined"] for i in range(4)}
    assert set(result["instructions"]) <= combined


def test_groups_that_do_not_fit_the_actions_fail(tmp_path, dataset):
    with pytest.raises(ConfigError, match="data.annotation.torso_dims"):
        run(tmp_path, ["data=isaac", f"data.root={dataset}", "data.annotation.torso_dims=[20,21,40]"])


def test_cli_writes_into_outputs_inspect(tmp_path, dataset):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "inspect_data.py"),
        "data=isaac",
        f"data.root={dataset}",
        f"paths.output_dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [run_dir] = (tmp_path / "inspect").glob("*/*")
    assert (run_dir / "frames.png").is_file() and (run_dir / "actions.png").is_file()


def test_sheet_shows_the_training_samples_after_augmentation(tmp_path, dataset, monkeypatch):
    """The sheet's frames are the pixels training gives those samples: same split, model input size,
    augmentation and seed, drawn through the DataModule that train.py uses."""
    import vla.data.inspect as inspect_module
    from vla.config import QuantizationConfig
    from vla.data.datamodule import VLADataModule
    from vla.training.build import build_base_model

    shown: dict[str, list[np.ndarray]] = {}
    real_sheet = inspect_module.frame_sheet

    def capture(frames, captions, path, title):
        shown[path.parent.name] = [np.array(frame) for frame in frames]
        return real_sheet(frames, captions, path, title)

    monkeypatch.setattr(inspect_module, "frame_sheet", capture)
    common = ["data=isaac", f"data.root={dataset}", "sheet_frames=4", "model.architecture.image_size=56"]
    plain = run(tmp_path / "none", [*common, "augment=none"])
    cfg = config(tmp_path / "openvla", [*common, "augment=openvla", f"paths.cache_dir={tmp_path / 'cache'}"])
    sys.path.insert(0, str(ROOT / "scripts"))
    import inspect_data

    augmented = inspect_data.run(cfg)

    assert plain["sheet"] == augmented["sheet"]  # the same samples, so only the augmentation differs
    for frame, raw in zip(shown["openvla"], shown["none"]):
        assert frame.dtype == np.uint8 and frame.shape == raw.shape == (56, 56, 3)
        assert np.abs(frame.astype(int) - raw.astype(int)).mean() > 1.0
    for key in ("frames_png", "actions_png"):
        assert Path(plain[key]).is_file() and Path(augmented[key]).is_file()
    with Image.open(plain["frames_png"]) as a, Image.open(augmented["frames_png"]) as b:
        assert a.size == b.size and np.asarray(a).tobytes() != np.asarray(b).tobytes()

    # Training's own path: DataModule split, frame cache, VLADataset, training sampler keys (epoch 0, i).
    datamodule = VLADataModule(
        cfg.data, cache_dir=cfg.paths.cache_dir, augment=cfg.augment, seed=cfg.seed, layout=cfg.model.layout
    )
    stats = datamodule.prepare()
    datamodule.attach(build_base_model(cfg.model, QuantizationConfig(), stats, cfg.augment.crop_scale))
    datamodule.setup("fit")
    for (episode_id, t, index), frame in zip(augmented["sheet"], shown["openvla"]):
        sample = datamodule.train_set[(0, index)]
        assert datamodule.train_episodes[sample["episode"]].episode_id == episode_id and sample["step"] == t
        np.testing.assert_array_equal(sample["images"].numpy(), frame)


def test_sheet_captions_carry_the_step_instruction(tmp_path, dataset, monkeypatch):
    import vla.data.inspect as inspect_module
    from vla.data.annotate import TEMPLATES

    seen: list[str] = []
    real_sheet = inspect_module.frame_sheet

    def capture(frames, captions, path, title):
        seen.extend(captions)
        return real_sheet(frames, captions, path, title)

    monkeypatch.setattr(inspect_module, "frame_sheet", capture)
    result = run(
        tmp_path, ["data=isaac", f"data.root={dataset}", "data.instructions=annotated", "sheet_frames=3"]
    )
    assert len(seen) == 3
    for caption, (episode_id, t, _) in zip(seen, result["sheet"]):
        first, *text = caption.split("\n")
        assert first == f"{episode_id} t={t}"
        # Every step of the factory's random actions is "combined" (as in the test above).
        task = f"pick up the cube {int(episode_id[-3:])}"
        assert " ".join(text) in {template.format(task=task) for template in TEMPLATES["combined"]}
