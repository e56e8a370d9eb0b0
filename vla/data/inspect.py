"""What `scripts/inspect_data.py` shows: counts, a per-dimension statistics table, a sheet of sample
frames and the action trajectories per DoF group."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vla.data.episodes import Episode
from vla.data.statistics import DatasetStatistics


def instruction_counts(episodes: list[Episode]) -> dict[str, Counter]:
    """Episodes per instruction, and training steps per instruction (per-step ones when annotated)."""
    per_episode = Counter(episode.instruction for episode in episodes)
    per_step = Counter(episode.instruction_at(t) for episode in episodes for t in range(episode.num_steps))
    return {"episodes": per_episode, "steps": per_step}


def dimension_names(episode: Episode, kind: str, dim: int) -> list[str]:
    """Names from the episode's metadata (Isaac `joint_names` / `state_names`) or `a0`, `s0`, ..."""
    key = "joint_names" if kind == "action" else "state_names"
    names = episode.metadata.get(key)  # recorded metadata, not config
    if isinstance(names, list) and len(names) == dim:
        return [str(name) for name in names]
    return [f"{kind[0]}{i}" for i in range(dim)]


def statistics_table(stats: DatasetStatistics, names: dict[str, list[str]]) -> str:
    """One line per action and state dimension: mean, std, min, q01, q99, max."""
    columns = ("mean", "std", "min", "q01", "q99", "max")
    lines = [f"{'':6} {'dimension':24} " + " ".join(f"{c:>8}" for c in columns)]
    for kind, key in (("action", "action"), ("state", "proprio")):
        summary = stats[key]
        for i, name in enumerate(names[kind]):
            values = " ".join(f"{summary[c][i]:8.3f}" for c in columns)
            lines.append(f"{kind:6} {name[:24]:24} {values}")
    return "\n".join(lines)


def frame_sheet(frames: list[np.ndarray], captions: list[str], path: Path, title: str) -> Path:
    """A grid of uint8 [H, W, 3] frames with a caption each, saved as PNG."""
    cols = min(4, len(frames))
    rows = -(-len(frames) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame, caption in zip(axes.flat, frames, captions):
        ax.imshow(frame)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


PHASE_COLORS = {
    "combined": "tab:purple",
    "walking": "tab:blue",
    "manipulation": "tab:orange",
    "balancing": "tab:green",
    "preparation": "tab:olive",
    "idle": "lightgrey",
}


def action_plot(
    episodes: list[Episode],
    groups: dict[str, list[int]],
    path: Path,
    phases: list[list[str]] | None = None,
) -> Path:
    """Rows: DoF groups; columns: episodes; one line per dimension of the group over the steps.
    `phases` (per episode, per step; `vla.data.annotate.classify_phases`) shade the background."""
    fig = Figure(figsize=(3.6 * len(episodes), 2.2 * len(groups)))
    axes = fig.subplots(
        len(groups),
        len(episodes),
        squeeze=False,
        sharex="col",
    )
    for col, episode in enumerate(episodes):
        names = dimension_names(episode, "action", episode.action_dim)
        for row, (group, dims) in enumerate(groups.items()):
            ax = axes[row, col]
            if phases is not None:
                _shade_phases(ax, phases[col])
            for dim in dims:
                ax.plot(episode.actions[:, dim], linewidth=0.9, label=names[dim])
            if col == 0:
                ax.set_ylabel(f"{group}\naction", fontsize=8)
            if row == 0:
                ax.set_title(episode.episode_id, fontsize=8)
            if row == len(groups) - 1:
                ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if col == len(episodes) - 1 and len(dims) <= 8:
                ax.legend(fontsize=5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if phases is not None:
        handles = [Rectangle((0, 0), 1, 1, color=c, alpha=0.25) for c in PHASE_COLORS.values()]
        fig.legend(handles, list(PHASE_COLORS), loc="upper center", ncol=len(PHASE_COLORS), fontsize=7)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    else:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _shade_phases(ax, phases: list[str]) -> None:
    start = 0
    for t in range(1, len(phases) + 1):
        if t == len(phases) or phases[t] != phases[start]:
            ax.axvspan(start - 0.5, t - 0.5, color=PHASE_COLORS[phases[start]], alpha=0.25, linewidth=0)
            start = t
