"""The loop's history: one row per round (data size, held-out success and its interval, promotion),
as `history.csv`, `history.md` and `history.png` in the loop's folder, and each round logged to the
configured logger (W&B, TensorBoard or CSV) as it finishes."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from vla.config import LoggerConfig
from vla.learn.dataset import write_json_atomic

COLUMNS = (
    "round",
    "relabel",
    "beta",
    "new_episodes",
    "new_successes",
    "train_episodes",
    "success_rate",
    "ci95_low",
    "ci95_high",
    "successes",
    "eval_episodes",
    "promoted",
    "policy",
)


def history_rows(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluated rounds' rows, in round order."""
    rows = []
    for m in manifests:
        if m.get("status") != "evaluated":
            continue
        ev = m["evaluation"]
        rows.append(
            {
                "round": m["round"],
                "relabel": m.get("relabel"),
                "beta": m.get("beta", 0.0),
                "new_episodes": 0 if m["round"] == 0 else m["counts"]["episodes"],
                "new_successes": 0 if m["round"] == 0 else m["counts"].get("successes", 0),
                "train_episodes": m["train_episodes"],
                "success_rate": round(ev["success_rate"], 4),
                "ci95_low": round(ev["ci95"][0], 4),
                "ci95_high": round(ev["ci95"][1], 4),
                "successes": ev["successes"],
                "eval_episodes": ev["episodes"],
                "promoted": bool(m["promoted"]),
                "policy": m["policy_trained"],
            }
        )
    return rows


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | relabel | beta | new episodes (successes) | training episodes | held-out success [95% CI] | promoted |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['relabel']} | {r['beta']:.3g} | {r['new_episodes']} ({r['new_successes']}) | "
            f"{r['train_episodes']} | {100 * r['success_rate']:.0f}% [{100 * r['ci95_low']:.0f}-"
            f"{100 * r['ci95_high']:.0f}] ({r['successes']}/{r['eval_episodes']}) | {'yes' if r['promoted'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot_history(rows: list[dict[str, Any]], path: Path) -> None:
    """Held-out success per round with its 95% interval (filled: promoted), and the training data size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    rate = [100 * r["success_rate"] for r in rows]
    low = [100 * (r["success_rate"] - r["ci95_low"]) for r in rows]
    high = [100 * (r["ci95_high"] - r["success_rate"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(
        rounds, rate, yerr=[low, high], fmt="-", color="tab:blue", capsize=4, label="held-out success"
    )
    for r, y in zip(rows, rate):
        ax.plot(r["round"], y, "o", color="tab:blue", mfc="tab:blue" if r["promoted"] else "white")
    ax.set(xlabel="round", ylabel="success % (95% Wilson CI)", ylim=(0, 105), xticks=rounds)
    ax2 = ax.twinx()
    ax2.bar(rounds, [r["train_episodes"] for r in rows], alpha=0.2, color="tab:gray", width=0.4)
    ax2.set_ylabel("training episodes")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title("filled: promoted (deployed)   hollow: kept, not deployed", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def write_history(rows: list[dict[str, Any]], loop_dir: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(loop_dir / "history.csv", buf.getvalue())
    _write_text(loop_dir / "history.md", markdown_table(rows))
    write_json_atomic(loop_dir / "history.json", {"rounds": rows})
    if rows:
        plot_history(rows, loop_dir / "history.png")


def log_round(logger: LoggerConfig, loop_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the history files for `rows` (the evaluated rounds so far) and log the last round to the
    configured logger at step = round: csv appends to
    `<loop>/csv/metrics.csv` (Lightning's CSVLogger would rewrite the file per process, losing the
    rounds of a resumed loop); tensorboard writes under `<loop>/tensorboard/`; wandb resumes one run
    per loop folder (offline unless logger.mode or WANDB_MODE says otherwise) and adds the history table."""
    write_history(rows, loop_dir)
    if logger.name == "none":
        return
    row = rows[-1]
    keys = ("success_rate", "ci95_low", "ci95_high", "train_episodes", "new_episodes", "beta", "promoted")
    metrics = {f"learn/{k}": float(row[k]) for k in keys}
    step = int(row["round"])
    if logger.name == "csv":
        path = loop_dir / "csv" / "metrics.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *metrics])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **metrics})
        return
    if logger.name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(loop_dir / "tensorboard")) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            if (loop_dir / "history.png").is_file():
                import numpy as np
                from PIL import Image

                image = np.asarray(Image.open(loop_dir / "history.png").convert("RGB"))
                writer.add_image("learn/history", image, step, dataformats="HWC")
            writer.add_text(
                "learn/history_table", (loop_dir / "history.md").read_text(encoding="utf-8"), step
            )
        return
    import wandb

    mode = logger.mode or os.environ.get("WANDB_MODE") or "offline"
    run = wandb.init(
        project=logger.project,
        name=f"learn_{loop_dir.name}",
        id=f"learn-{loop_dir.name}",
        dir=str(loop_dir),
        mode=mode,
        tags=list(logger.tags),
        resume="allow",
    )
    try:
        # One row at step = round, as TensorBoard's: each round of a loop (a resumed one too) is a new
        # process, and W&B's own step counter starts again at 0 in each.
        table = wandb.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])
        plot = wandb.Image(str(loop_dir / "history.png"))
        run.log(
            {**metrics, "learn/round": step, "learn/history": table, "learn/history_plot": plot}, step=step
        )
    finally:
        run.finish()
