"""The data doctor on the simulator's real sample data (`data=sample`, 1,100 episodes): clean with the
default thresholds, and faults injected into it flagged by their checks. Slow (loading takes ~15 s of
CPU); skipped when the default sample dataset is not in the cache (`make sim-data` generates it)."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, compose_config
from vla.config.doctor import DoctorConfig, DoctorSettings
from vla.data.doctor import diagnose
from vla.data.episodes import LoadResult

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from vla.data.isaac import load_isaac_episodes
    from vla.sim.episodes import sample_dataset_key

    cfg = compose_config("doctor", [f"run_dir={tmp_path_factory.mktemp('doctor')}"], DoctorConfig)
    settings = cfg.data.sample.generation_settings(cfg.sim)
    root = Path(cfg.paths.cache_dir) / "sample_data" / f"athena-{sample_dataset_key(settings)}"
    if not root.is_dir():
        pytest.skip(f"the default sample data is not generated ({root}); make sim-data")
    return cfg, load_isaac_episodes(root).episodes


def test_make_doctor_on_the_sample_data_finds_no_warning(sample):
    cfg, _ = sample
    sys.path.insert(0, str(ROOT / "scripts"))
    import doctor

    result = doctor.run(cfg)
    assert result["status"] == 0 and result["counts"]["error"] == result["counts"]["warning"] == 0
    assert {f.check for f in result["findings"]} == {"constant"}  # unused joints, the fixed pelvis height


def _moving(episodes, dim: int) -> int:
    """The first episode in which action `dim` moves by more than 0.3 rad."""
    return next(i for i, e in enumerate(episodes) if np.ptp(e.actions[:, dim]) > 0.3)


def _replace(episodes, i, **arrays):
    episodes[i] = dataclasses.replace(episodes[i], **arrays)
    return episodes[i].episode_id


def _column(array, dim, rows=slice(None), factor=None, value=None):
    array = array.copy()
    array[rows, dim] = array[rows, dim] * factor if factor is not None else value
    return array


def inject(name: str, episodes: list) -> tuple[str, str]:
    """Apply fault `name`; returns (the check meant to flag it, the episode id it must name)."""
    shoulder = 12  # left_shoulder_pitch
    if name == "nan":
        return "non_finite", _replace(episodes, 5, actions=_column(episodes[5].actions, 3, 4, value=np.nan))
    if name == "degrees":
        i = _moving(episodes, shoulder)
        return "unit_mixup", _replace(
            episodes, i, actions=_column(episodes[i].actions, shoulder, factor=180 / np.pi)
        )
    if name == "dead_sensor":
        states = episodes[7].states.copy()
        states[:, 13] = states[0, 13]
        return "frozen", _replace(episodes, 7, states=states)
    if name == "outlier":  # left_shoulder_yaw: q01..q99 = -0.40..0.35; 4.0 is 4.9 ranges out
        i = _moving(episodes, 14)
        return "outlier", _replace(episodes, i, actions=_column(episodes[i].actions, 14, 3, value=4.0))
    if name == "duplicate":
        episodes.append(dataclasses.replace(episodes[9], episode_id="copy_of_9"))
        return "duplicate", "copy_of_9"
    if name == "timestamps":
        times = episodes[11].timestamps.copy()
        times[6:] += 1.0
        return "timestamp_gap", _replace(episodes, 11, timestamps=times)
    if name == "q01_equals_q99":
        waist = 20  # waist_yaw: moves in 9% of the episodes; now in 2 frames of one
        for i, e in enumerate(episodes):
            _replace(episodes, i, actions=_column(e.actions, waist, value=0.0))
        return "quantile_collapse", _replace(
            episodes, 13, actions=_column(episodes[13].actions, waist, slice(0, 2), value=[0.4, 0.5])
        )
    if name == "rare_instruction":
        return "instruction_rare", _replace(episodes, 15, instruction="dance", instructions=["dance"])
    if name == "extra_dim":
        e = episodes[17]
        return "dim_mismatch", _replace(episodes, 17, actions=np.c_[e.actions, e.actions[:, :1]])
    if name == "gripper_0_100":
        for i, e in enumerate(episodes):
            _replace(episodes, i, actions=_column(e.actions, 22, value=100.0 * (np.arange(e.num_steps) % 2)))
        return "gripper_range", episodes[0].episode_id
    raise KeyError(name)


FAULTS = [
    "nan",
    "degrees",
    "dead_sensor",
    "outlier",
    "duplicate",
    "timestamps",
    "q01_equals_q99",
    "rare_instruction",
    "extra_dim",
    "gripper_0_100",
]


@pytest.mark.parametrize("name", FAULTS)
def test_a_fault_injected_into_the_sample_data_is_flagged(sample, name):
    _, clean = sample
    episodes = copy.copy(clean)  # arrays are replaced, never changed in place
    check, episode_id = inject(name, episodes)
    findings = diagnose(LoadResult(episodes), DoctorSettings(), dataset_key="athena_sim").findings
    flagged = [f for f in findings if f.check == check and f.severity in ("warning", "error")]
    assert flagged and any(episode_id in f.episodes for f in flagged), [
        (f.check, f.message) for f in findings
    ]
