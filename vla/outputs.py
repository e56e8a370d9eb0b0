"""The outputs tree: every stage writes `<paths.output_dir>/<stage>/<date>/<time>[_<name>]/`, and the
stage after it can pick up the newest finished folder (`checkpoint=latest`, `run=latest`). Each stage's
folder is claimed when Hydra resolves `hydra.run.dir` (`${claim_dir:...}`, `claim_folder`), so two
stages started in the same second write to two folders (`<time>` and `<time>_2`), never to one."""

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


def numbered(path: Path, attempts: int = 1000) -> list[Path]:
    """`path`, then `path_2`, `path_3`, ... (`attempts` in all): the names a run folder may take when an
    earlier run holds `path` (they sort after it, as `latest_folder` reads them)."""
    return [path] + [path.with_name(f"{path.name}_{n}") for n in range(2, attempts + 1)]


def claim_folder(path: str, attempts: int = 1000) -> str:
    """`path`, or the first of its `numbered` names that does not exist yet, created here: `mkdir`
    fails on an existing folder, so two processes that ask for the same path at the same moment get two
    folders. The `claim_dir` resolver (registered with `use_cache`, so one process resolving its run
    folder twice gets the same answer)."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for candidate in numbered(base, attempts):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise ConfigError(
        f"{base}: it and {attempts - 1} numbered folders beside it exist; pass hydra.run.dir=DIR"
    )


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
