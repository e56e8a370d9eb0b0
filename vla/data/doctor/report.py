"""The doctor's report: `report.md` (findings, exact per-dimension statistics, instruction coverage,
glossary), `doctor.json` (the same for programs) and two plots, each written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vla.config.doctor import SEVERITIES
from vla.data.doctor import CHECKS, Diagnosis

QUANTILE_METHOD = (
    "q01 and q99 are `numpy.quantile(x, 0.01 / 0.99)` with numpy's default `method='linear'` (Hyndman and "
    "Fan's type 7: the value at position p (N - 1) of the N sorted values, interpolated linearly), over "
    "all frames of all checked episodes pooled in float64, not averaged per episode; std is the "
    "population std (ddof=0). These are the numbers training saves in dataset_statistics.json "
    "(`vla.data.statistics`), which computes them on the train split of the filtered episodes."
)


def write_report(diagnosis: Diagnosis, run_dir: str | Path, header: dict[str, Any], max_listed: int) -> dict:
    """Write the plots, doctor.json and report.md (last) into `run_dir`; returns their paths.
    `header` (data name, root, times, ...) heads the report. Each file goes through a temporary
    sibling and a rename, so a reader never sees a half-written one and a failed run leaves none."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"plot_dimensions": run_dir / "dimensions.png", "plot_instructions": run_dir / "instructions.png"}
    if diagnosis.statistics is not None:
        _atomic(
            paths["plot_dimensions"], lambda f: _dimension_plot(diagnosis).savefig(f, format="png", dpi=90)
        )
    else:
        del paths["plot_dimensions"]
    if diagnosis.instruction_counts:
        _atomic(
            paths["plot_instructions"],
            lambda f: _instruction_plot(diagnosis).savefig(f, format="png", dpi=90),
        )
    else:
        del paths["plot_instructions"]
    summary = {
        **header,
        "counts": {severity: diagnosis.count(severity) for severity in SEVERITIES},
        "loaded": diagnosis.loaded,
        "skipped": diagnosis.skipped,
        "checked": len(diagnosis.checked),
        "base_statistics": diagnosis.base,
        "findings": [dataclasses.asdict(f) for f in diagnosis.findings],
        "statistics": diagnosis.statistics,
        "instructions": dict(diagnosis.instruction_counts.most_common()),
    }
    paths["json"] = run_dir / "doctor.json"
    text = json.dumps(summary, indent=1, default=str)
    _atomic(paths["json"], lambda f: f.write(text.encode()))
    paths["report"] = run_dir / "report.md"
    markdown = _markdown(diagnosis, header, paths, max_listed)
    _atomic(paths["report"], lambda f: f.write(markdown.encode()))
    return {key: str(path) for key, path in paths.items()}


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(temp, 0o644)  # mkstemp makes the file private; the report is not secret
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _markdown(diagnosis: Diagnosis, header: dict[str, Any], paths: dict[str, Path], max_listed: int) -> str:
    counts = {severity: diagnosis.count(severity) for severity in SEVERITIES}
    lines = [f"# Data doctor: {header.get('data', '?')}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "data"]
    lines += [
        f"- episodes: {diagnosis.loaded} loaded, {diagnosis.skipped} left out by the loader, "
        f"{len(diagnosis.checked)} in the statistics",
        f"- base statistics: {diagnosis.base or 'none (doctor.base_stats=PATH or a local model.pretrained)'}",
        "",
        f"**{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s).** "
        "Severities: `error` (training on this would go wrong; exit status 1), `warning` (look at it; "
        "exit status 1 with doctor.fail_on=warning), `info` (a fact, never fails).",
        "",
        "## Findings",
        "",
    ]
    if not diagnosis.findings:
        lines.append("None.")
    for f in diagnosis.findings:
        dims = (
            f" ({', '.join(f.dims[:max_listed])}{' ...' if len(f.dims) > max_listed else ''})"
            if f.dims
            else ""
        )
        lines.append(f"- **{f.severity}** `{f.check}`{dims}: {f.message}")
    stats = diagnosis.statistics
    if stats is not None:
        lines += [
            "",
            f"## Per-dimension statistics ({stats['num_transitions']} frames, "
            f"{stats['num_trajectories']} episodes)",
            "",
            QUANTILE_METHOD,
            "",
        ]
        lines += [
            "| kind | dim | name | mean | std | min | q01 | q99 | max | normalized |",
            "|" + " --- |" * 10,
        ]
        for kind, key in (("action", "action"), ("state", "proprio")):
            summary = stats[key]
            for d, name in enumerate(diagnosis.names[kind]):
                values = " | ".join(
                    f"{summary[c][d]:.4g}" for c in ("mean", "std", "min", "q01", "q99", "max")
                )
                normalized = "yes" if kind == "state" or summary["mask"][d] else "no (mask_dims)"
                lines.append(f"| {kind} | {d} | {name} | {values} | {normalized} |")
    counts_by_text = diagnosis.instruction_counts
    if counts_by_text:
        per = np.array(list(counts_by_text.values()))
        lines += [
            "",
            f"## Instructions: {len(per)} distinct, episodes each: min {per.min()}, median "
            f"{int(np.median(per))}, max {per.max()}",
            "",
            "| episodes | instruction |",
            "| --- | --- |",
        ]
        ranked = counts_by_text.most_common()
        shown = (
            ranked
            if len(ranked) <= 4 * max_listed
            else ranked[:max_listed] + [(None, None)] + ranked[-max_listed:]
        )
        for text, n in shown:
            lines.append("| ... | ... |" if text is None else f"| {n} | {text} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({Path(path).name})" for key, path in paths.items() if key.startswith("plot_")]
    lines += ["", "## Checks", "", "| check | severity | flags |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {severity} | {what} |" for name, (severity, what) in CHECKS.items()]
    return "\n".join(lines) + "\n"


def _dimension_plot(diagnosis: Diagnosis) -> Figure:
    """Per dimension: min..max (thin), q01..q99 (thick) and the mean, on a symlog axis; dimensions
    with a warning or an error in red."""
    flagged = {d for f in diagnosis.findings if f.severity != "info" for d in f.dims}
    kinds = [("action", "action"), ("state", "proprio")]
    kinds = [(kind, key) for kind, key in kinds if diagnosis.names[kind]]
    fig = Figure(figsize=(max(8, 0.22 * max(len(diagnosis.names[k]) for k, _ in kinds)), 3.2 * len(kinds)))
    axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
    for ax, (kind, key) in zip(axes, kinds):
        s = diagnosis.statistics[key]
        x = np.arange(len(s["mean"]))
        colors = ["tab:red" if f"{kind}/{n}" in flagged else "tab:blue" for n in diagnosis.names[kind]]
        ax.vlines(x, s["min"], s["max"], colors=colors, linewidth=0.8)
        ax.vlines(x, s["q01"], s["q99"], colors=colors, linewidth=4)
        ax.plot(x, s["mean"], "k.", markersize=3)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xticks(x, diagnosis.names[kind], rotation=90, fontsize=6)
        ax.set_title(f"{kind}s: min..max, q01..q99 and mean (red: flagged)", fontsize=9)
    fig.tight_layout()
    return fig


def _instruction_plot(diagnosis: Diagnosis) -> Figure:
    ranked = diagnosis.instruction_counts.most_common()
    shown = ranked if len(ranked) <= 60 else ranked[:30] + ranked[-30:]
    fig = Figure(figsize=(8, 1 + 0.16 * len(shown)))
    ax = fig.subplots()
    ax.barh(np.arange(len(shown)), [n for _, n in shown], color="tab:blue")
    ax.set_yticks(np.arange(len(shown)), [text[:60] for text, _ in shown], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("episodes")
    title = "episodes per instruction" + (" (the 30 most and least common)" if len(ranked) > 60 else "")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
