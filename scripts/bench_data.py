"""Is data loading the bottleneck? Loader samples/s (cold and cached) against the trainer's consumption.

python scripts/bench_data.py                                  # data=sample, tiny model, augment=none
python scripts/bench_data.py augment=openvla data.num_workers=2 data.batch_size=16

1. cold epoch: the train split with every frame decoded from its PNG/JPEG and resized per sample;
2. cache build: each frame decoded once into the memory-mapped cache (vla.data.cache), in a fresh
   folder so it is always measured;
3. cached epoch: the same epoch read from the cache;
4. trainer: forward + backward + AdamW step of the model (adapter as configured) on batches of the
   cached loader collected beforehand, so loading is not counted.
Targets: cached epoch >= 10x the cold one; cached loader >= 5x what the training step consumes.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import BenchDataConfig, QuantizationConfig, register_configs, to_object  # noqa: E402

register_configs()


def loader(dataset, cfg: BenchDataConfig, pad_id: int, max_samples: int | None):
    from torch.utils.data import DataLoader, Subset

    from vla.data.datamodule import ShuffleSampler
    from vla.data.dataset import collate

    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    keys = list(ShuffleSampler(len(dataset), cfg.seed))[:n]  # (epoch, index), as training draws them
    return DataLoader(
        Subset(dataset, keys),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
        collate_fn=functools.partial(collate, pad_id=pad_id),
    )


def epoch_rate(batches) -> tuple[float, int, float]:
    """(samples/s, samples, seconds) of one pass, worker start-up included."""
    start = time.perf_counter()
    n = sum(len(batch["input_ids"]) for batch in batches)
    seconds = time.perf_counter() - start
    return n / seconds, n, seconds


def train_rate(module, batches: list, cfg: BenchDataConfig) -> float:
    """Samples/s of the training step alone (forward, backward, optimizer step)."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    module.train()
    start, samples = 0.0, 0
    for i, batch in enumerate(batches):
        if i == cfg.warmup_steps:
            start, samples = time.perf_counter(), 0
        module.training_loss(batch)[0].backward()  # as training_step: normalize, forward, the head's loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(batch["input_ids"])
    return samples / (time.perf_counter() - start)


def run(cfg: BenchDataConfig) -> dict[str, float]:
    import torch

    from vla.data.augment import make_augment
    from vla.data.cache import build_frame_cache
    from vla.data.datamodule import VLADataModule, model_state_stats
    from vla.data.dataset import VLADataset
    from vla.sim.episodes import resolve_sample_data
    from vla.training.adapters import apply_adapter
    from vla.training.build import build_base_model
    from vla.training.module import VLAModule

    torch.manual_seed(cfg.seed)
    data = resolve_sample_data(cfg.data, cfg.sim, cfg.paths.cache_dir)  # data=sample: generated once
    datamodule = VLADataModule.for_run(data, cfg)
    stats = datamodule.prepare()
    base = build_base_model(cfg.model, QuantizationConfig(), stats, cfg.augment.crop_scale)
    transform, episodes = base.processor.image_transform, datamodule.train_episodes
    make = functools.partial(
        VLADataset,
        episodes,
        base.processor,
        base.action_tokenizer,
        stats[cfg.data.dataset_key]["action"],
        chunk_size=cfg.model.layout.chunk_size,
        state_stats=model_state_stats(base, stats, cfg.data.dataset_key),
        augment=make_augment(cfg.augment, transform.size),
        seed=cfg.seed,
    )
    pad = base.processor.tokenizer.pad_token_id
    frames_total = sum(e.num_steps for e in episodes)
    print(
        f"data: {len(episodes)} train episodes, {frames_total} samples, batch {cfg.data.batch_size}, "
        f"workers {cfg.data.num_workers}, model input {transform.size} px, augment={cfg.augment.name}, "
        f"chunk {cfg.model.layout.chunk_size}, torch threads {torch.get_num_threads()}"
    )
    cold, n_cold, cold_s = epoch_rate(loader(make(frames=None), cfg, pad, cfg.max_samples))
    print(f"cold epoch (decode every frame):  {cold:9.1f} samples/s  ({n_cold} samples in {cold_s:.1f} s)")

    cache_dir = Path(cfg.paths.cache_dir) / "bench_data"
    shutil.rmtree(cache_dir, ignore_errors=True)  # always measure the build
    start = time.perf_counter()
    frames = build_frame_cache(episodes, transform.resize, transform.size, cache_dir, progress=False)
    build_s = time.perf_counter() - start
    print(f"cache build (decode once):        {frames_total / build_s:9.1f} frames/s   ({build_s:.1f} s)")
    cached_set = make(frames=frames)
    cached, n_cached, cached_s = epoch_rate(loader(cached_set, cfg, pad, cfg.max_samples))
    print(
        f"cached epoch:                     {cached:9.1f} samples/s  ({n_cached} samples in {cached_s:.1f} s)"
    )

    n_batches = cfg.warmup_steps + cfg.train_steps
    batches = list(loader(cached_set, cfg, pad, n_batches * cfg.data.batch_size))
    model = apply_adapter(base, cfg.lora)
    module = VLAModule(model, cfg.optim, stats[cfg.data.dataset_key]["action"], max_steps=n_batches)
    trainer = train_rate(module, batches, cfg)
    print(f"trainer consumption ({cfg.model.name}, lora={cfg.lora.name}): {trainer:9.1f} samples/s  "
          f"({cfg.train_steps} steps)")  # fmt: skip
    result = {
        "cold_samples_per_s": cold,
        "cache_build_s": build_s,
        "cached_samples_per_s": cached,
        "trainer_samples_per_s": trainer,
        "cached_over_cold": cached / cold,
        "loader_over_trainer": cached / trainer,
    }
    print(f"cached / cold:    {result['cached_over_cold']:6.1f}x  (target >= 10x)")
    print(f"loader / trainer: {result['loader_over_trainer']:6.1f}x  (target >= 5x)")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench_data")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco (sample data, closed-loop checks)
    with user_errors():
        run(to_object(cfg, BenchDataConfig))


if __name__ == "__main__":
    main()
