"""Stages a newcomer can chain: `latest` resolves to the newest finished run or export, a missing input is
one line naming the key, and make_sample_data writes the dataset that train reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vla.cli import user_errors
from vla.config import (
    ConfigError,
    EvaluateConfig,
    MakeSampleDataConfig,
    PredictConfig,
    TrainConfig,
    to_object,
)
from vla.outputs import claim_folder, latest_folder, resolve_latest


def finished_run(root: Path, date: str, time: str) -> Path:
    folder = root / "train" / date / time
    (folder / "adapter").mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    return folder


def test_latest_is_the_newest_finished_folder(tmp_path):
    assert latest_folder(tmp_path, "train") is None
    finished_run(tmp_path, "2026-11-30", "23-59-59")
    newest = finished_run(tmp_path, "2026-12-01", "08-00-00_named")
    unfinished = tmp_path / "train" / "2026-12-01" / "09-00-00"  # config saved, training still running
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("{}\n")
    assert latest_folder(tmp_path, "train") == newest
    export = tmp_path / "export" / "2026-12-01" / "10-00-00"
    export.mkdir(parents=True)
    assert latest_folder(tmp_path, "export") is None  # no export.json: killed or still running
    (export / "export.json").write_text("{}\n")
    assert latest_folder(tmp_path, "export") == export


def test_claimed_folders_are_never_shared(tmp_path):
    """`claim_folder`: the path, then path_2, path_3 ... each created by the caller that gets it, also
    when eight threads ask for the same path at once (mkdir, not a check-then-create)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path / "evaluate" / "2026-12-01" / "10-00-00"
    assert claim_folder(str(base)) == str(base) and base.is_dir()
    assert claim_folder(str(base)) == f"{base}_2"
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim_folder, [str(base)] * 8))
    assert sorted(claimed) == sorted(f"{base}_{i}" for i in range(3, 11))
    assert all(Path(folder).is_dir() for folder in claimed)
    with pytest.raises(ConfigError, match="numbered folders beside it exist"):
        claim_folder(str(base), attempts=10)


def test_stages_started_in_the_same_second_get_their_own_folders(tmp_path, compose):
    """Every stage's run folder goes through `${claim_dir:...}` (predict and benchmark write none: `.`):
    two compositions of the same stage in the same second (the run folder names the second) resolve to
    two folders, and one composition resolving its folder again gets the same one (Hydra reads it more
    than once)."""
    from omegaconf import OmegaConf

    stages = sorted(p.stem for p in (ROOT / "conf").glob("*.yaml") if "run:" in p.read_text())
    assert {"train", "evaluate", "export", "serve"} <= set(stages)
    for stage in stages:
        folder = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / f"{stage}.yaml").hydra.run)["dir"]
        assert folder == "." or folder.startswith("${claim_dir:"), stage
    overrides = [f"paths.output_dir={tmp_path}"]
    first, second = (compose("evaluate", overrides, return_hydra_config=True) for _ in range(2))
    a, b = first.hydra.run.dir, second.hydra.run.dir
    assert first.hydra.run.dir == a  # cached: resolved again, the same folder
    if Path(a).name[:8] == Path(b).name[:8]:  # composed within the same second
        assert b == f"{a}_2"
    assert a != b and Path(a).is_dir() and Path(b).is_dir()


def test_resolve_latest_prints_which_and_names_the_key_when_there_is_none(tmp_path, capsys):
    assert resolve_latest("some/dir", "run", tmp_path, "train") == "some/dir"
    with pytest.raises(
        ConfigError, match=r"^checkpoint=latest: no finished export folder under .*make export"
    ):
        resolve_latest("latest", "checkpoint", tmp_path, "export")
    run = finished_run(tmp_path, "2026-12-01", "08-00-00")
    assert resolve_latest("latest", "run", tmp_path, "train") == str(run)
    assert str(run) in capsys.readouterr().out


def test_user_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info, user_errors():
        to_object({"instruction": "reach"}, PredictConfig)  # image=??? missing
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: image: required, give image=...\n"
    with pytest.raises(ZeroDivisionError), user_errors():  # a bug keeps its traceback
        _ = 1 / 0


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("predict.py", ["instruction=reach the red ball"], "error: image: required, give image=..."),
        ("export.py", [], "error: run=latest: no finished train folder under"),
        ("benchmark.py", [], "error: checkpoint=latest: no finished export folder under"),
    ],
)
def test_entry_points_say_what_is_missing_in_one_line(tmp_path, script, args, expected):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), f"paths.output_dir={tmp_path}", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_make_sample_data_writes_the_dataset_train_reads(compose):
    """Both compose the same data and sim groups, so the generation settings (and the cache key, their
    hash) are the same, also when a data.sample key is overridden on both command lines."""
    from vla.sim.episodes import sample_dataset_key

    for extra in ([], ["data.sample.episodes_per_task=3", "data.sample.image_size=64"]):
        train = compose("train", ["run_dir=x", *extra], TrainConfig)
        make = compose("make_sample_data", extra, MakeSampleDataConfig)
        ours = make.data.sample.generation_settings(make.sim)
        theirs = train.data.sample.generation_settings(train.sim)
        assert ours == theirs and sample_dataset_key(ours) == sample_dataset_key(theirs)
    assert make.data.sample.episodes_per_task == 3 and ours.sim.image_size == 64


def test_evaluate_scene_is_the_data_sample_one_unless_a_run_says_otherwise(compose):
    cfg = compose("evaluate", ["checkpoint=null"], EvaluateConfig)
    sim = cfg.settings().sim
    sample = cfg.data.sample
    assert (sim.image_size, sim.camera, sim.control_hz) == (
        sample.image_size,
        sample.camera,
        sample.control_hz,
    )
    trained = type(sample)(image_size=96, camera="upper_body", control_hz=5)
    sim = cfg.settings(trained).sim
    assert (sim.image_size, sim.camera, sim.control_hz) == (96, "upper_body", 5)
    assert sim.safety == cfg.sim.safety
