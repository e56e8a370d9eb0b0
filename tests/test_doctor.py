"""The data doctor: a seeded fault suite, each fault flagged by the check meant for it; clean data without
a finding; exact statistics; the report written whole; scripts/doctor.py on episode folders."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from doctor_faults import (
    EPISODES,
    FAULTS,
    FPS,
    KEY,
    MASK,
    STEPS,
    clean_episode,
    duplicate,
    write_folders,
    write_isaac_lab_hdf5,
)

from tests.conftest import ROOT, compose_config
from vla.config import ConfigError
from vla.config.doctor import DoctorConfig, DoctorSettings
from vla.data.doctor import CHECKS, diagnose
from vla.data.doctor.report import write_report
from vla.data.episodes import DataError, Episode, LoadResult
from vla.data.statistics import compute_statistics, save_statistics


@pytest.fixture(scope="module")
def clean() -> list[Episode]:
    return [clean_episode(i) for i in range(EPISODES)]


def check(episodes: list[Episode], skipped=(), base_stats=None, **settings):
    return diagnose(
        LoadResult(episodes, list(skipped)),
        DoctorSettings(**settings),
        mask_dims=MASK,
        dataset_key=KEY,
        base_stats=base_stats,
    )


def test_clean_data_has_no_finding_at_all(clean):
    diagnosis = check(clean)
    assert diagnosis.findings == []
    assert not diagnosis.failed("warning")
    assert len(diagnosis.checked) == EPISODES and diagnosis.statistics["num_transitions"] == EPISODES * STEPS


def test_statistics_pool_every_frame_instead_of_averaging_episodes():
    short, long = clean_episode(0), clean_episode(1)
    long = dataclasses.replace(
        long,
        episode_id="long",
        actions=np.tile(long.actions * 3, (4, 1)),
        states=np.tile(long.states, (4, 1)),
        timestamps=np.arange(4 * STEPS) / FPS,
        frames=np.tile(long.frames, (4, 1, 1, 1)),
    )
    stats = check([short, long]).statistics["action"]
    pooled = np.concatenate([short.actions, long.actions]).astype(np.float64)
    # By definition (numpy's linear quantile over the pooled frames); the frame-weighted mean.
    np.testing.assert_allclose(stats["q01"], np.quantile(pooled, 0.01, axis=0))
    np.testing.assert_allclose(stats["q99"], np.quantile(pooled, 0.99, axis=0))
    np.testing.assert_allclose(stats["mean"], pooled.mean(axis=0))
    per_episode = np.mean([np.quantile(e.actions, 0.99, axis=0) for e in (short, long)], axis=0)
    assert np.abs(np.asarray(stats["q99"]) - per_episode)[:7].max() > 0.1  # averaging would differ


def test_the_fault_suite_covers_at_least_ten_kinds_of_fault():
    assert len({fault.check for fault in FAULTS.values()}) >= 10
    assert {fault.check for fault in FAULTS.values()} <= set(CHECKS)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_fault_is_flagged_by_its_check(name, clean, tmp_path):
    fault = FAULTS[name]
    episodes = copy.deepcopy(clean)
    extra = fault.inject(episodes, tmp_path)
    diagnosis = check(episodes, **extra)
    found = [f for f in diagnosis.findings if f.check == fault.check]
    assert found, (
        f"{name}: not flagged by {fault.check}; findings: {[(f.check, f.message) for f in diagnosis.findings]}"
    )
    assert all(f.severity in ("warning", "error") for f in found)
    tripped = {f.check for f in diagnosis.findings}
    assert tripped <= {fault.check, *fault.also}, f"{name}: other checks fired: {tripped}"
    assert fault.episodes <= {e for f in found for e in f.episodes}
    named = {e for e in fault.episodes if any(e in f.message for f in found)}
    assert len(named) >= min(len(fault.episodes), 10)  # messages list the first doctor.max_listed
    if fault.dim is not None:
        assert any(fault.dim in f.dims for f in found)
    # The doctor fails the run (exit status 1) on errors; warnings fail it with fail_on=warning.
    assert diagnosis.failed("warning")


def test_errors_fail_the_run_and_warnings_only_with_fail_on_warning(clean, tmp_path):
    duplicated = copy.deepcopy(clean)
    duplicate(duplicated, tmp_path)
    assert not check(duplicated).failed("error") and check(duplicated).failed("warning")
    degrees = copy.deepcopy(clean)
    FAULTS["degrees_episode"].inject(degrees, tmp_path)
    assert check(degrees).failed("error")


def test_unit_mixup_message_gives_the_numbers(clean, tmp_path):
    episodes = copy.deepcopy(clean)
    FAULTS["degrees_episode"].inject(episodes, tmp_path)
    (finding,) = [f for f in check(episodes).findings if f.check == "unit_mixup"]
    largest = float(np.abs(episodes[5].actions[:, 1]).max())
    assert f"{largest:.4g}" in finding.message and "57.3" in finding.message


def test_a_masked_dimension_may_have_q01_equal_q99(clean, tmp_path):
    episodes = copy.deepcopy(clean)
    FAULTS["q01_equals_q99"].inject(episodes, tmp_path)  # a6: 0 except in 3 of 1,000 frames
    assert [f.check for f in check(episodes).findings] == ["quantile_collapse"]
    masked = diagnose(LoadResult(episodes), DoctorSettings(), mask_dims=[6, 7])  # passed through as is
    assert masked.findings == []


def test_episodes_without_states_are_checked_on_their_actions(clean, tmp_path):
    no_states = [dataclasses.replace(e, states=np.zeros((STEPS, 0), np.float32)) for e in clean]
    assert check(no_states).findings == []
    FAULTS["degrees_episode"].inject(no_states, tmp_path)
    assert [f.check for f in check(no_states).findings] == ["unit_mixup"]


def test_gripper_is_told_from_a_joint_that_holds_two_poses(clean):
    # a7 as a joint target that holds 0, moves to 1.4 in 3 steps and holds it (92% of the frames at two
    # values): no gripper. The same as a binary 0 / 1.4 signal, or named a gripper: out of [-1, 1].
    def with_a7(episode, column, names=None):
        actions = episode.actions.copy()
        actions[:, 7] = column
        metadata = {"joint_names": names} if names else {}
        return dataclasses.replace(episode, actions=actions, metadata=metadata)

    held = np.r_[np.zeros(10), [0.35, 0.7, 1.05], np.full(STEPS - 13, 1.4)]
    joint = [with_a7(e, held) for e in clean]
    assert diagnose(LoadResult(joint), DoctorSettings()).findings == []
    binary = [with_a7(e, np.where(held > 0, 1.4, 0.0)) for e in clean]
    (finding,) = diagnose(LoadResult(binary), DoctorSettings()).findings
    assert (finding.check, finding.severity, finding.dims) == ("gripper_range", "warning", ["action/a7"])
    names = [f"joint_{i}" for i in range(7)] + ["right_gripper"]
    named = [with_a7(e, held * 50, names) for e in clean]  # 0..70: a gripper in percent
    (finding,) = diagnose(LoadResult(named), DoctorSettings()).findings
    assert finding.check == "gripper_range" and "its name" in finding.message


def test_states_in_degrees_are_flagged_unless_that_check_is_off(clean):
    episodes = copy.deepcopy(clean)
    states = episodes[5].states.copy()
    states[:, 0] *= 180 / np.pi
    episodes[5] = dataclasses.replace(episodes[5], states=states)
    assert [(f.check, f.dims) for f in check(episodes).findings] == [("unit_mixup", ["state/s0"])]
    assert check(episodes, state_unit_limit=None).findings == []


def test_skipped_episodes_are_reported_under_their_check():
    skipped = [
        ("ep_a", "episode 'ep_a' (/d/ep_a): 24 images in /d/ep_a/images but 25 actions in episode_data.npz"),
        (
            "ep_b",
            "/d/ep_b/episode_data.npz: 'actions' has 2 non-finite values (NaN/inf), first at step 3, dim 1",
        ),
        (
            "ep_c",
            "episode 'ep_c' (/d/ep_c): metadata has no non-empty instruction in any of ['task_description']",
        ),
        ("ep_d", "/d/ep_d/episode_data.npz: cannot read: zipfile.BadZipFile"),
        ("ep_e", "/d/x.hdf5#demo_4: obs 'front_rgb' has 23 steps, 'actions' has 25"),
    ]
    diagnosis = check([clean_episode(0), clean_episode(1)], skipped=skipped)
    by_episode = {f.episodes[0]: f for f in diagnosis.findings if f.severity == "error"}
    assert {e: f.check for e, f in by_episode.items()} == {
        "ep_a": "count_mismatch",
        "ep_b": "non_finite",
        "ep_c": "instruction_empty",
        "ep_d": "load_error",
        "ep_e": "count_mismatch",
    }
    assert "BadZipFile" in by_episode["ep_d"].message


@pytest.mark.skipif(not hasattr(Episode, "camera_frames"), reason="Episode has no other cameras yet")
def test_another_cameras_frame_count_is_checked(clean):
    episodes = copy.deepcopy(clean)
    wrist = np.zeros((STEPS - 2, 8, 8, 3), np.uint8)
    episodes[0] = dataclasses.replace(episodes[0], cameras={"wrist": wrist})
    (finding,) = [f for f in check(episodes).findings if f.check == "count_mismatch"]
    assert finding.episodes == ["ep00"] and f"{STEPS - 2} frames for {STEPS}" in finding.message


def test_base_statistics_with_the_same_layout_pass_and_a_degree_base_is_flagged(clean, tmp_path):
    stats = compute_statistics(clean, mask_dims=MASK)
    save_statistics(tmp_path / "same.json", {KEY: stats})
    assert check(clean, base_stats=tmp_path / "same.json").findings == []
    degrees = copy.deepcopy(stats)
    for key in ("q01", "q99"):
        degrees["action"][key] = [v * 57.3 for v in stats["action"][key]]
    save_statistics(tmp_path / "degrees.json", {KEY: degrees})
    (finding,) = check(clean, base_stats=tmp_path / "degrees.json").findings
    assert finding.check == "base_scale" and "action/a0" in finding.dims


def test_base_statistics_from_a_model_config_and_bad_inputs(clean, tmp_path):
    stats = compute_statistics(clean[:3])
    stats["action"] = {k: v[:7] for k, v in stats["action"].items()}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"norm_stats": {"bridge_orig": stats}}))
    (finding,) = check(clean, base_stats=model).findings  # one other key: a warning, not an error
    assert (finding.check, finding.severity) == (
        "base_action_dim",
        "warning",
    ) and "bridge_orig" in finding.message
    with pytest.raises(ConfigError, match="doctor.base_key='nope'.*bridge_orig"):
        check(clean, base_stats=model, base_key="nope")
    with pytest.raises(DataError, match="no such statistics file"):
        check(clean, base_stats=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="data.mask_dims"):
        diagnose(LoadResult(clean), DoctorSettings(), mask_dims=[99])


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="doctor.outlier_k"):
        DoctorSettings(outlier_k=0)
    with pytest.raises(ConfigError, match="doctor.fail_on"):
        DoctorSettings(fail_on="info")


def test_a_failed_report_write_leaves_the_previous_report_whole(clean, tmp_path, monkeypatch):
    diagnosis = check(clean)
    paths = write_report(diagnosis, tmp_path, {"data": "clean"}, max_listed=10)
    before = Path(paths["report"]).read_text()
    assert "0 error(s), 0 warning(s), 0 note(s)" in before
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    episodes = copy.deepcopy(clean)
    duplicate(episodes, tmp_path)
    with pytest.raises(OSError, match="No space"):
        write_report(check(episodes), tmp_path, {"data": "duplicated"}, max_listed=10)
    assert Path(paths["report"]).read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))


# ---- scripts/doctor.py on Isaac episode folders written from the clean episodes ----


def run_script(root: Path, run_dir: Path, *overrides: str, data: str = "isaac") -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import doctor

    cfg = compose_config(
        "doctor",
        [f"data={data}", f"data.root={root}", f"data.mask_dims={MASK}", f"data.dataset_key={KEY}"]
        + [f"run_dir={run_dir}", *overrides],
        DoctorConfig,
    )
    return doctor.run(cfg)


def test_script_clean_folders_exit_0_and_write_the_report(clean, tmp_path, capsys):
    write_folders(clean[:12], tmp_path / "data")  # 3 episodes per instruction: enough for the default
    result = run_script(tmp_path / "data", tmp_path / "run")
    assert result["status"] == 0 and result["counts"] == {"error": 0, "warning": 0, "info": 0}
    assert f"report: {tmp_path / 'run' / 'report.md'}" in capsys.readouterr().out
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| action | 7 | a7 |" in report and "no (mask_dims)" in report and "method='linear'" in report
    saved = json.loads((tmp_path / "run" / "doctor.json").read_text())
    assert saved["statistics"]["num_transitions"] == 12 * STEPS and saved["findings"] == []
    assert {p.name for p in (tmp_path / "run").iterdir()} == {
        "report.md",
        "doctor.json",
        "dimensions.png",
        "instructions.png",
    }


def test_script_reports_bad_files_by_episode_with_on_error_skip(clean, tmp_path):
    root = tmp_path / "data"
    write_folders(clean[:12], root)
    frame = root / "ep01" / "images" / "frame_000000.png"
    frame.with_name("frame_999999.png").write_bytes(frame.read_bytes())  # one image too many
    with np.load(root / "ep02" / "episode_data.npz") as npz:
        arrays = dict(npz)
    arrays["actions"][4, 0] = np.nan
    np.savez(root / "ep02" / "episode_data.npz", **arrays)
    (root / "ep03" / "metadata.json").write_text(json.dumps({"task_description": " ", "fps": FPS}))

    result = run_script(root, tmp_path / "run")  # data.on_error=raise is overridden: every bad one is listed
    assert result["status"] == 1
    errors = {f.episodes[0]: f.check for f in result["findings"] if f.severity == "error"}
    assert errors == {"ep01": "count_mismatch", "ep02": "non_finite", "ep03": "instruction_empty"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "ep01: left out by the loader" in report and "26 images" in report and "but 25 actions" in report


def test_script_on_a_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        run_script(tmp_path / "nowhere", tmp_path / "run")


def test_script_reads_a_lerobot_dataset_through_load_episodes(clean, tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("pyarrow")
    from vla.data.lerobot_writer import write_lerobot_dataset

    # 16 px frames (libx264 wants even sizes); the frames become MP4 clips the doctor does not decode.
    episodes = [
        dataclasses.replace(e, frames=e.frames.repeat(2, axis=1).repeat(2, axis=2)) for e in clean[:12]
    ]
    write_lerobot_dataset(episodes, tmp_path / "clean")
    FAULTS["degrees_episode"].inject(episodes, tmp_path)
    write_lerobot_dataset(episodes, tmp_path / "degrees")

    result = run_script(tmp_path / "clean", tmp_path / "run_clean", data="lerobot")
    assert result["status"] == 0 and result["findings"] == []
    result = run_script(tmp_path / "degrees", tmp_path / "run_degrees", data="lerobot")
    assert result["status"] == 1
    assert [(f.check, f.episodes, f.dims) for f in result["findings"]] == [
        ("unit_mixup", ["episode_000005"], ["action/a1"])
    ]


def test_script_reads_isaac_lab_hdf5_and_counts_the_other_cameras_frames(clean, tmp_path):
    pytest.importorskip("h5py")
    write_isaac_lab_hdf5(tmp_path / "clean.hdf5", clean[:12])
    write_isaac_lab_hdf5(tmp_path / "short.hdf5", clean[:12], wrist_short=3)
    # One instruction for every demo (Isaac Lab records none), so 12 episodes of it: no warning.
    hdf5 = ["data.camera=front_rgb", "data.instruction=stack the cubes"]
    result = run_script(tmp_path / "clean.hdf5", tmp_path / "run_clean", *hdf5, data="hdf5")
    assert result["status"] == 0 and result["findings"] == []
    result = run_script(tmp_path / "short.hdf5", tmp_path / "run_short", *hdf5, data="hdf5")
    assert result["status"] == 1
    (finding,) = result["findings"]
    assert finding.check == "count_mismatch" and "'wrist_rgb' has 23 frames for 25" in finding.message
    assert finding.episodes[0].endswith("demo_3")


def test_every_episode_bad_still_gives_a_report(clean, tmp_path):
    broken = [dataclasses.replace(e, actions=np.full_like(e.actions, np.nan)) for e in clean[:3]]
    diagnosis = check(broken)
    errors = [f.check for f in diagnosis.findings if f.severity == "error"]
    assert diagnosis.statistics is None and errors == ["non_finite"] * 3
    paths = write_report(diagnosis, tmp_path, {"data": "broken"}, max_listed=10)
    assert "3 error(s)" in Path(paths["report"]).read_text() and "plot_dimensions" not in paths


def test_script_compares_with_the_configured_models_statistics(clean, tmp_path):
    write_folders(clean[:12], tmp_path / "data")
    stats = compute_statistics(clean[:12])
    stats["action"] = {k: v[:7] for k, v in stats["action"].items()}
    model = tmp_path / "openvla"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"norm_stats": {KEY: stats}}))
    result = run_script(tmp_path / "data", tmp_path / "run", f"model.pretrained={model}")
    assert result["status"] == 1
    (finding,) = result["findings"]
    assert (finding.check, finding.severity) == ("base_action_dim", "error")
    assert "8 dimensions" in finding.message and f"{model / 'config.json'}" in finding.message


def test_script_refuses_a_bad_base_key_before_loading_the_data(clean, tmp_path):
    save_statistics(tmp_path / "base.json", {KEY: compute_statistics(clean[:2])})
    # The data folder does not exist: the base key's error must come first.
    with pytest.raises(ConfigError, match=r"doctor.base_key='nope'.*\['sim_robot'\]"):
        run_script(
            tmp_path / "missing",
            tmp_path / "run",
            f"doctor.base_stats={tmp_path / 'base.json'}",
            "doctor.base_key=nope",
        )
