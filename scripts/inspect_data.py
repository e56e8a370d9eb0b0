"""Look at the training data before training on it: what a run with the same `data` choices would see.

python scripts/inspect_data.py                                        # the simulated sample data
python scripts/inspect_data.py data=isaac data.root=DIR data.instructions=annotated
python scripts/inspect_data.py data=pickle data.root=demos.pkl data.filter.min_length=20
python scripts/inspect_data.py augment=openvla                         # the sheet as augment=openvla trains
Prints episodes, steps, instruction counts, per-dimension statistics and the quality-filter report;
writes frames.png (train-split samples at the model's input size after the training augmentation,
labelled with each step's instruction) and actions.png (action trajectories per DoF group) to
outputs/inspect/<date>/<time>/.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import InspectDataConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: InspectDataConfig) -> dict:
    """Load, filter and annotate as training does; print the summary and write the two PNGs.
    Returns the counts, the filter report, the samples on the sheet and the PNG paths."""
    from vla.data.annotate import GROUP_KEYS, check_groups, classify_phases
    from vla.data.augment import make_augment
    from vla.data.datamodule import prepare_episodes
    from vla.data.dataset import SampleImages
    from vla.data.inspect import (
        action_plot,
        dimension_names,
        frame_sheet,
        instruction_counts,
        statistics_table,
    )
    from vla.data.statistics import compute_statistics, split_episodes
    from vla.sim.episodes import resolve_sample_data
    from vla.training.build import base_image_transform

    run_dir = Path(cfg.run_dir)
    data = resolve_sample_data(cfg.data, cfg.sim, cfg.paths.cache_dir)  # data=sample: generated once
    loaded, filtered = prepare_episodes(data, cfg.paths.cache_dir)
    episodes = filtered.kept
    first = episodes[0]
    check_groups(cfg.data.annotation, first.action_dim)
    stats = compute_statistics(episodes, mask_dims=cfg.data.mask_dims)
    steps = sum(episode.num_steps for episode in episodes)
    lengths = [episode.num_steps for episode in episodes]
    counts = instruction_counts(episodes)
    report = filtered.report()

    print(
        f"\n== data: {cfg.data.name} ({cfg.data.format}), instructions={cfg.data.instructions}, "
        f"augment={cfg.augment.name}"
    )
    print(f"episodes: {len(episodes)} kept of {len(loaded.episodes)} loaded ({len(loaded.skipped)} skipped)")
    print(
        f"steps:    {steps} (per episode min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)})"
    )
    print(f"dims:     action {first.action_dim}, state {first.state_dim}")
    print("\n== quality filter (data.filter)")
    print("  " + ", ".join(f"{key} {value}" for key, value in report.items()))
    for drop in filtered.dropped:
        print(f"  dropped {drop.episode_id}: {drop.rule}: {drop.reason}")
    for skipped in loaded.skipped:
        print(f"  skipped by the loader {skipped.episode_id}: {skipped.reason}")
    print(
        f"\n== instructions: {len(counts['episodes'])} distinct per episode, {len(counts['steps'])} per step"
    )
    for text, n in counts["steps"].most_common(cfg.top_instructions):
        print(f"  {n:6d} steps  {text}")
    names = {
        "action": dimension_names(first, "action", first.action_dim),
        "state": dimension_names(first, "state", first.state_dim),
    }
    print("\n== per-dimension statistics (all kept episodes)")
    print(statistics_table(stats, names))

    # Train-split samples as training sees them: at the model's input size, augmented by the `augment`
    # group with the pixels train.py (same seed) gives these samples in its first epoch.
    train_episodes, _ = split_episodes(episodes, cfg.data.val_fraction, cfg.data.split_seed)
    transform = base_image_transform(cfg.model, cfg.augment.crop_scale)
    augment = make_augment(cfg.augment, transform.size)
    images = SampleImages(train_episodes, transform, augment=augment, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    flat = [(e, t) for e, episode in enumerate(train_episodes) for t in range(episode.num_steps)]
    chosen = sorted(rng.choice(len(flat), size=min(cfg.sheet_frames, len(flat)), replace=False))
    frames, captions, shown = [], [], []
    for index in map(int, chosen):
        e, t = flat[index]
        episode = train_episodes[e]
        frames.append(images(e, t, epoch=0, index=index))
        text = "\n".join(textwrap.wrap(episode.instruction_at(t), 34)[:3])
        captions.append(f"{episode.episode_id} t={t}\n{text}")
        shown.append((episode.episode_id, t, index))
    title = (
        f"{cfg.data.name}: train samples, augment={cfg.augment.name}, {transform.size} px "
        f"(seed {cfg.seed}, epoch 0)"
    )
    frames_png = frame_sheet(frames, captions, run_dir / "frames.png", title)
    picked = sorted(rng.choice(len(episodes), size=min(cfg.plot_episodes, len(episodes)), replace=False))
    groups = {key.removesuffix("_dims"): getattr(cfg.data.annotation, key) for key in GROUP_KEYS}
    plotted = [episodes[i] for i in picked]
    phases = [classify_phases(episode.actions, cfg.data.annotation) for episode in plotted]
    actions_png = action_plot(plotted, groups, run_dir / "actions.png", phases)
    print(f"\nframes:  {frames_png}\nactions: {actions_png}")
    return {
        "episodes": len(episodes),
        "steps": steps,
        "loaded": len(loaded.episodes),
        "skipped": len(loaded.skipped),
        "filter": report,
        "instructions": dict(counts["steps"]),
        "sheet": shown,  # (episode id, step, train-sample index) of each frame in frames.png
        "frames_png": str(frames_png),
        "actions_png": str(actions_png),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="inspect_data")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (sample data, closed-loop checks)
    with user_errors():
        run(to_object(cfg, InspectDataConfig))


if __name__ == "__main__":
    main()
