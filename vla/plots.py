"""Validation plots: predicted vs demonstrated action trajectories, and per-DoF error bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def trajectory_plot(records: list[dict[str, np.ndarray]], n_episodes: int, path: Path, title: str) -> Path:
    """One row per held-out episode; each DoF's demonstrated (solid) and predicted (dashed) trajectory."""
    episode = np.concatenate([r["episode"] for r in records])
    step = np.concatenate([r["step"] for r in records])
    pred = np.concatenate([r["pred"] for r in records])
    true = np.concatenate([r["true"] for r in records])
    chosen = list(dict.fromkeys(episode.tolist()))[:n_episodes]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    colors = plt.cm.tab20(np.linspace(0, 1, pred.shape[1]))
    for ax, e in zip(axes[:, 0], chosen):
        rows = np.flatnonzero(episode == e)
        rows = rows[np.argsort(step[rows])]
        for d in range(pred.shape[1]):
            ax.plot(step[rows], true[rows, d], color=colors[d], lw=1.2)
            ax.plot(step[rows], pred[rows, d], color=colors[d], lw=1.0, ls="--")
        ax.set_ylabel(f"episode {e}")
    axes[-1, 0].set_xlabel("step (solid: demonstration, dashed: prediction, one colour per DoF)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def dof_error_plot(records: list[dict[str, np.ndarray]], path: Path, title: str) -> Path:
    err = np.abs(np.concatenate([r["pred"] - r["true"] for r in records]))
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(np.arange(err.shape[1]), err.mean(axis=0), yerr=err.std(axis=0), capsize=2, color="tab:blue")
    ax.set_xlabel("DoF")
    ax.set_ylabel("mean |error| (robot units)")
    ax.set_xticks(np.arange(err.shape[1]))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
