"""Validation curves of a training run logged with logger=csv: val/loss, val/action_l1, val/success_rate.

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


def read_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (train with logger=csv)")
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES}
    with path.open() as f:
        for row in csv.DictReader(f):
            for name in CURVES:
                if row.get(name):
                    curves[name].append((int(row["step"]) + 1, float(row[name])))
    return curves


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
            ax.plot(*zip(*points), marker="o")
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
