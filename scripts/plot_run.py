"""Curves of a training run logged with logger=csv: val/loss (with train/loss, averaged between
validations, so overfitting shows), val/action_l1 (with val/grounding_l1 for runs with model.layout.grounding),
val/success_rate (with reach_ball's named-ball rate when the run logged it: the hand went for the
named ball, within the success radius or not).

python scripts/plot_run.py outputs/train/<date>/<time> [--out curves.png]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = ("val/loss", "val/action_l1", "val/success_rate")
# Drawn in the val/loss, val/action_l1 and success panels.
EXTRA = ("train/loss", "val/grounding_l1", "val/named_ball_rate/reach_ball")


def read_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (train with logger=csv)")
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES + EXTRA}
    with path.open() as f:
        for row in csv.DictReader(f):
            for name in CURVES + EXTRA:
                if row.get(name):
                    curves[name].append((int(row["step"]) + 1, float(row[name])))
    return curves


def averaged_between(points: list[tuple[int, float]], ends: list[int]) -> list[tuple[int, float]]:
    """The mean of `points` over each interval (previous end, end], placed at the end."""
    out, start = [], 0
    for end in ends:
        values = [v for step, v in points if start < step <= end]
        if values:
            out.append((end, sum(values) / len(values)))
        start = end
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <run>/plots/curves.png")
    args = parser.parse_args()
    curves = read_curves(args.run)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for ax, name in zip(axes, CURVES):
        points = curves[name]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
        if name == "val/loss" and points and curves["train/loss"]:
            train = averaged_between(curves["train/loss"], [step for step, _ in points])
            ax.plot(*zip(*train), marker="s", linestyle="--", label="train/loss (mean since last val)")
            ax.legend(fontsize=7)
        if name == "val/action_l1" and curves["val/grounding_l1"]:
            ax.plot(*zip(*curves["val/grounding_l1"]), marker="s", linestyle="--", label="val/grounding_l1")
            ax.legend(fontsize=7)
        if name == "val/success_rate":
            named = curves["val/named_ball_rate/reach_ball"]
            if named:
                ax.plot(*zip(*named), marker="s", linestyle="--", label="named_ball_rate/reach_ball")
                ax.legend(fontsize=7)
            ax.set_ylim(0.0, 1.0)  # a rate: a flat 20% must not fill the panel
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = args.out or args.run / "plots" / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(out)


if __name__ == "__main__":
    main()
