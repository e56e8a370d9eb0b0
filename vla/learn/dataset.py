"""The versioned dataset of a continuous-learning loop: one folder per round, each with a manifest.

    <loop>/dataset/round_000/manifest.json        round 0: the start policy's own training data (by path)
    <loop>/dataset/round_001/episodes/<task>_<seed:06d>/   Isaac episode folders (vla.data.isaac)
    <loop>/dataset/round_001/manifest.json        round, policy, seeds, counts, relabel mode, status, ...
    <loop>/views/round_001/r000_<episode> -> ...  symlinks: the union of rounds 0..1 (what round 1 trains on)

Everything is written so that a crash leaves what was there intact: an episode is written into a
hidden temporary sibling and renamed into place (the Isaac loader skips hidden folders), a manifest is
replaced atomically (temporary file, fsync, rename), a view is built aside and renamed. A round's
manifest appears only once all its episodes are on disk, and its `status` then moves
recorded -> trained -> evaluated, so a loop run again on the same folder resumes after the last step
that finished.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from vla.data.isaac import write_isaac_episode

STATUSES = ("recorded", "trained", "evaluated")


class LoopError(RuntimeError):
    """The loop's folder cannot be used as it is (a damaged manifest, a missing start dataset, ...);
    the message names the file."""


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    """`record` as JSON in `path`, through a temporary sibling, fsync and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LoopError(f"{path}: unreadable ({err}); restore it or remove its round folder") from None
    if not isinstance(record, dict):
        raise LoopError(f"{path}: expected a JSON object")
    return record


class VersionedDataset:
    """The rounds under `<loop>/dataset/` and the union views under `<loop>/views/`."""

    def __init__(self, loop_dir: str | Path) -> None:
        self.loop_dir = Path(loop_dir)
        self.root = self.loop_dir / "dataset"
        self.views = self.loop_dir / "views"

    def round_dir(self, r: int) -> Path:
        return self.root / f"round_{r:03d}"

    def episodes_dir(self, r: int) -> Path:
        return self.round_dir(r) / "episodes"

    def manifest(self, r: int) -> dict[str, Any] | None:
        """Round r's manifest, None when the round has none yet (not begun, or its recording was cut)."""
        path = self.round_dir(r) / "manifest.json"
        if not path.is_file():
            return None
        record = read_json(path)
        missing = [k for k in ("round", "status", "episodes_dir") if k not in record]
        if missing or record["status"] not in STATUSES or record["round"] != r:
            raise LoopError(f"{path}: not a round-{r} manifest (missing {missing} or a bad status/round)")
        return record

    def write_manifest(self, r: int, record: dict[str, Any]) -> None:
        if record.get("status") not in STATUSES:
            raise ValueError(f"manifest status {record.get('status')!r}: one of {STATUSES}")
        self.round_dir(r).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.round_dir(r) / "manifest.json", {**record, "round": r})

    def manifests(self) -> list[dict[str, Any]]:
        """The manifests of rounds 0, 1, ... up to the first round without one."""
        out = []
        while (record := self.manifest(len(out))) is not None:
            out.append(record)
        return out

    def recorded(self, r: int) -> set[str]:
        """Names of round r's episodes already complete on disk (an interrupted round keeps them)."""
        folder = self.episodes_dir(r)
        if not folder.is_dir():
            return set()
        return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}

    def write_episode(
        self, r: int, name: str, episode: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> Path:
        """One Isaac episode folder (plus `extra` arrays in rollout.npz), atomically."""
        import numpy as np

        final = self.episodes_dir(r) / name
        if final.exists():
            raise LoopError(f"{final}: already recorded; a round never overwrites an episode")
        tmp = final.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            write_isaac_episode(episode, tmp)
            if extra:
                np.savez(tmp / "rollout.npz", **extra)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def clean_partial(self, r: int) -> int:
        """Remove temporary episode folders an interrupted round left; returns how many."""
        folder = self.episodes_dir(r)
        stale = [p for p in folder.glob(".tmp-*")] if folder.is_dir() else []
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return len(stale)

    def union_view(self, r: int) -> Path:
        """`views/round_<r>/`: a symlink per episode of rounds 0..r (round 0's from the start data's
        folder), built aside and renamed; reused when it exists."""
        final = self.views / f"round_{r:03d}"
        if final.is_dir():
            return final
        tmp = self.views / f".tmp-round_{r:03d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for k in range(r + 1):
                record = self.manifest(k)
                if record is None:
                    raise LoopError(f"{self.round_dir(k)}: no manifest; round {k} was never recorded")
                source = Path(record["episodes_dir"])
                if not source.is_dir():
                    raise LoopError(
                        f"{source}: round {k}'s episodes are gone ({self.round_dir(k)}/manifest.json)"
                    )
                for episode in sorted(source.iterdir()):
                    if episode.is_dir() and not episode.name.startswith("."):
                        (tmp / f"r{k:03d}_{episode.name}").symlink_to(
                            episode.resolve(), target_is_directory=True
                        )
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
