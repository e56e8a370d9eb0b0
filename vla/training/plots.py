"""Validation plots: predicted vs demonstrated action trajectories, and per-DoF error bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def trajectory_plot(records: list[dict[str, np.ndarray]], n_episodes: int, path: Path, title: str) -> Path:
    """One panel per DoF; per held-out episode the demonstrated (solid) and predicted (dashed) action."""
    episode = np.concatenate([r["episode"] for r in records])
    step = np.concatenate([r["step"] for r in records])
    pred = np.concatenate([r["pred"] for r in records])
    true = np.concatenate([r["true"] for r in records])
    chosen = list(dict.fromkeys(episode.tolist()))[:n_episodes]
    dims = pred.shape[1]
    cols = min(6, dims)
    rows = -(-dims // cols)
    fig = Figure(figsize=(2.6 * cols, 1.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.axis("off")
            continue
        for k, e in enumerate(chosen):
            idx = np.flatnonzero(episode == e)
            idx = idx[np.argsort(step[idx])]
            color = f"C{k}"
            ax.plot(step[idx], true[idx, d], color=color, lw=1.2, label=f"episode {e}" if d == 0 else None)
            ax.plot(step[idx], pred[idx, d], color=color, lw=1.0, ls="--")
        ax.set_title(f"DoF {d}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{title}: demonstration (solid) vs prediction (dashed), held-out episodes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def dof_error_plot(records: list[dict[str, np.ndarray]], path: Path, title: str) -> Path:
    err = np.abs(np.concatenate([r["pred"] - r["true"] for r in records]))
    fig = Figure(figsize=(10, 3))
    ax = fig.subplots()
    ax.bar(np.arange(err.shape[1]), err.mean(axis=0), yerr=err.std(axis=0), capsize=2, color="tab:blue")
    ax.set_xlabel("DoF")
    ax.set_ylabel("mean |error| (robot units)")
    ax.set_xticks(np.arange(err.shape[1]))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
