"""The outputs tree: every stage writes `<paths.output_dir>/<stage>/<date>/<time>[_<name>]/`, and the
stage after it can pick up the newest finished folder (`checkpoint=latest`, `run=latest`)."""

from __future__ import annotations

from pathlib import Path

from vla.config.base import ConfigError
from vla.config.stages import LATEST

# What makes a stage's folder finished (written last, or only on success).
FINISHED = {
    "train": lambda d: (d / "config.yaml").is_file() and ((d / "adapter").is_dir() or (d / "model").is_dir()),
    "export": lambda d: (d / "export.json").is_file(),
}
MAKE_TARGET = {"train": "make train", "export": "make export"}


def latest_folder(output_dir: str | Path, stage: str) -> Path | None:
    """The newest finished `<output_dir>/<stage>/<date>/<time>*` folder (by its date and time), or None."""
    root = Path(output_dir) / stage
    folders = [d for d in root.glob("*/*") if d.is_dir() and FINISHED[stage](d)]
    return max(folders, key=lambda d: (d.parent.name, d.name), default=None)


def resolve_latest(value: str | None, key: str, output_dir: str | Path, stage: str) -> str | None:
    """`value` itself, or for `latest` the newest finished folder of `stage` (printed, so the user sees
    which); none yet is a one-line ConfigError naming the key."""
    if value != LATEST:
        return value
    found = latest_folder(output_dir, stage)
    if found is None:
        raise ConfigError(
            f"{key}=latest: no finished {stage} folder under {Path(output_dir) / stage}; run "
            f"`{MAKE_TARGET[stage]}` first or pass {key}=DIR"
        )
    print(f"{key}: {found} (the latest {stage} folder; pass {key}=DIR for another)")
    return str(found)
