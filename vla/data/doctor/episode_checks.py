"""Checks of whole episodes: what the loader left out and why, non-finite values, frame counts per
camera, timestamps, duplicated episodes and instruction coverage."""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from vla.config.doctor import DoctorSettings
from vla.data.doctor.findings import Finding, listed
from vla.data.episodes import DataError, Episode, SkippedEpisode
from vla.data.inspect import dimension_names

# What a loader's reason for leaving an episode out (on_error=skip) is about, by its wording (the
# loaders' DataError messages); anything else is a `load_error`.
SKIP_KINDS = (
    ("non_finite", re.compile(r"non-finite|\bNaN\b", re.IGNORECASE)),
    (
        "count_mismatch",
        re.compile(
            r"images? in .* but \d+ actions|\d+ frames (but|for) \d+|has \d+ steps, expected \d+"
            r"|has \d+ steps, '\w+' has \d+|num_samples is \d+ but"
        ),
    ),
    ("instruction_empty", re.compile(r"non-empty (string|instruction)")),
    ("dim_mismatch", re.compile(r"dimension \d+ differs")),
)


def skipped_findings(skipped: Sequence[SkippedEpisode]) -> list[Finding]:
    """One error per episode the loader left out, filed under the check its reason is about."""
    findings = []
    for episode_id, reason in skipped:
        check = next((kind for kind, pattern in SKIP_KINDS if pattern.search(reason)), "load_error")
        findings.append(
            Finding(check, "error", f"{episode_id}: left out by the loader: {reason}", episodes=[episode_id])
        )
    return findings


def non_finite(episode: Episode) -> Finding | None:
    """NaN/inf in the actions or states of an episode built in memory (the loaders refuse them)."""
    parts, dims = [], []
    for kind, array in (("action", episode.actions), ("state", episode.states)):
        bad = ~np.isfinite(array)
        if bad.any():
            names = dimension_names(episode, kind, array.shape[1])
            columns = [names[c] for c in np.flatnonzero(bad.any(axis=0))]
            step = int(np.argwhere(bad)[0][0])
            parts.append(f"{int(bad.sum())} in {kind}s ({listed(columns, 10)}; first at step {step})")
            dims += [f"{kind}/{c}" for c in columns]
    if not parts:
        return None
    return Finding(
        "non_finite",
        "error",
        f"{episode.episode_id}: NaN/inf values, {'; '.join(parts)}; the episode is left out of the "
        "statistics (training's quality filter drops it).",
        episodes=[episode.episode_id],
        dims=dims,
    )


def frame_count(source) -> int | None:
    """Frames of a camera without decoding them: an array's length, a video clip's `num_frames`, an
    HDF5 camera's dataset shape (`vla.data.hdf5.H5Frames`); None for anything else."""
    if isinstance(source, np.ndarray):
        return len(source)
    if getattr(source, "num_frames", None) is not None:
        return int(source.num_frames)
    if type(source).__name__ == "H5Frames":
        import h5py

        try:
            with h5py.File(source.path, "r") as f:
                return int(f[source.dataset].shape[0])
        except Exception as exc:
            raise DataError(
                f"{source.path}: cannot read {source.dataset}: {type(exc).__name__}: {exc}"
            ) from exc
    return None


def camera_counts(episodes: Sequence[Episode]) -> list[Finding]:
    """Cameras besides the model's (`Episode.cameras`) whose frame count differs from the episode's
    steps, counted without decoding (`frame_count`)."""
    findings = []
    for episode in episodes:
        for name, source in getattr(episode, "cameras", {}).items():
            count = frame_count(source)
            if count is not None and count != episode.num_steps:
                findings.append(
                    Finding(
                        "count_mismatch",
                        "error",
                        f"{episode.episode_id}: camera {name!r} has {count} frames for {episode.num_steps} "
                        "actions: frames and actions no longer pair up step by step.",
                        episodes=[episode.episode_id],
                    )
                )
    return findings


def timestamps(episodes: Sequence[Episode], settings: DoctorSettings) -> list[Finding]:
    """Per episode with timestamps: steps that go back or stand still, gaps, and a rate off its fps."""
    backwards, gaps, rates = [], [], []
    for episode in episodes:
        times = getattr(episode, "timestamps", None)
        if times is None or len(times) < 2:
            continue
        times = np.asarray(times, dtype=np.float64)
        if len(times) != episode.num_steps or not np.isfinite(times).all():
            backwards.append(
                (episode.episode_id, f"{len(times)} timestamps for {episode.num_steps} steps or NaN/inf")
            )
            continue
        dt = np.diff(times)
        if (dt <= 0).any():
            t = int(np.flatnonzero(dt <= 0)[0])
            backwards.append(
                (
                    episode.episode_id,
                    f"step {t + 1} at {times[t + 1]:.4g} s after {times[t]:.4g} s ({int((dt <= 0).sum())} such steps)",
                )
            )
            continue
        expected = 1.0 / episode.fps if episode.fps else float(np.median(dt))
        long = np.flatnonzero(dt > settings.timestamp_gap * expected)
        if len(long):
            t = int(long[np.argmax(dt[long])])
            gaps.append(
                (
                    episode.episode_id,
                    f"{len(long)} gap(s), the longest {dt[t]:.4g} s after step {t} ({dt[t] / expected:.1f} steps of {expected:.4g} s)",
                )
            )
        if episode.fps:
            median = float(np.median(dt))
            if abs(median * episode.fps - 1) > settings.fps_tolerance:
                rates.append(
                    (
                        episode.episode_id,
                        f"median step {median:.4g} s, {1 / median:.3g} Hz, but fps {episode.fps:g}",
                    )
                )
    findings = []
    for check, severity, found, what in (
        ("timestamp_order", "error", backwards, "timestamps that do not increase"),
        (
            "timestamp_gap",
            "warning",
            gaps,
            f"steps longer than {settings.timestamp_gap:g} x the expected step",
        ),
        (
            "timestamp_rate",
            "warning",
            rates,
            f"a step rate more than {settings.fps_tolerance:.0%} off their fps",
        ),
    ):
        if found:
            details = "; ".join(f"{e}: {text}" for e, text in found[: settings.max_listed])
            more = f" (+{len(found) - settings.max_listed} more)" if len(found) > settings.max_listed else ""
            findings.append(
                Finding(
                    check,
                    severity,
                    f"{len(found)} episode(s) with {what}: {details}{more}.",
                    episodes=[e for e, _ in found],
                )
            )
    return findings


def frames_digest(episode: Episode) -> str | None:
    """A hash of the episode's frames when it is cheap: in-memory frames whole, image files by the bytes
    of the first and last file. None for video clips (decoding them is not cheap)."""
    if episode.frames is not None:
        return hashlib.sha1(np.ascontiguousarray(episode.frames).tobytes()).hexdigest()
    paths = episode.frame_paths
    if paths is None:
        return None
    digest = hashlib.sha1()
    for path in (paths[0], paths[-1]):
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise DataError(f"episode {episode.episode_id!r}: cannot read image {path}: {exc}") from exc
    return digest.hexdigest()


def duplicates(episodes: Sequence[Episode], settings: DoctorSettings) -> list[Finding]:
    """Episodes with byte-identical actions (and states), and episodes with the same frames but
    different actions."""
    actions_key = {
        e.episode_id: hashlib.sha1(e.actions.tobytes() + e.states.tobytes()).hexdigest() for e in episodes
    }
    frames_key = {e.episode_id: frames_digest(e) for e in episodes} if settings.hash_frames else {}
    by_actions, by_frames = defaultdict(list), defaultdict(list)
    for episode in episodes:
        by_actions[actions_key[episode.episode_id]].append(episode)
        if frames_key.get(episode.episode_id) is not None:
            by_frames[frames_key[episode.episode_id]].append(episode)
    findings = []
    for group in by_actions.values():
        if len(group) > 1:
            ids = [e.episode_id for e in group]
            same_frames = frames_key and len({frames_key[i] for i in ids}) == 1 and frames_key[ids[0]]
            findings.append(
                Finding(
                    "duplicate",
                    "warning",
                    f"{len(ids)} episodes have identical actions and states ({group[0].num_steps} steps"
                    f"{', and the same frames' if same_frames else ''}): {listed(ids, settings.max_listed)}; a "
                    "copy over-weights the demonstration and can sit in both the train and the val split.",
                    episodes=ids,
                )
            )
    for group in by_frames.values():
        ids = [e.episode_id for e in group]
        if len({actions_key[i] for i in ids}) > 1:
            findings.append(
                Finding(
                    "duplicate_frames",
                    "warning",
                    f"{len(ids)} episodes start and end with the same frames but not all have the same "
                    f"actions: {listed(ids, settings.max_listed)}; one camera stream copied into several "
                    "episodes?",
                    episodes=ids,
                )
            )
    return findings


def normalized_instruction(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def instructions(episodes: Sequence[Episode], settings: DoctorSettings) -> list[Finding]:
    """Instructions held by few episodes, and instructions that differ only in case, spacing or
    punctuation (the model sees them as different prompts)."""
    counts = Counter(episode.instruction for episode in episodes)
    holders = defaultdict(list)
    for episode in episodes:
        holders[episode.instruction].append(episode.episode_id)

    def described(text: str) -> str:
        return f"{text!r} ({counts[text]}: {listed(holders[text], 3)})"

    findings = []
    rare = sorted((n, text) for text, n in counts.items() if n < settings.min_instruction_episodes)
    if rare:
        findings.append(
            Finding(
                "instruction_rare",
                "warning",
                f"{len(rare)} of {len(counts)} instructions have fewer than {settings.min_instruction_episodes} "
                f"episodes: {listed([described(text) for _, text in rare], settings.max_listed)}.",
                episodes=[e for _, text in rare for e in holders[text]],
            )
        )
    variants = defaultdict(list)
    for text in counts:
        variants[normalized_instruction(text)].append(text)
    for texts in variants.values():
        if len(texts) > 1:
            findings.append(
                Finding(
                    "instruction_variant",
                    "warning",
                    f"{len(texts)} instructions differ only in case, spacing or punctuation: "
                    f"{listed([described(t) for t in texts], settings.max_listed)}.",
                    episodes=[e for text in texts for e in holders[text]],
                )
            )
    return findings
