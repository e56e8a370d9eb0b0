"""The Lightning DataModule: load episodes (sample, Isaac, pickle, LeRobot v3 or HDF5), quality filter, language annotation,
split, statistics, loaders.

Frames come from the image cache (`vla.data.cache`, built in `setup` with `data.cache_images`); the
train split is augmented (`augment` group), the validation split centre-cropped when training crops.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from vla.config import AugmentConfig, ConfigError, DataConfig, LayoutConfig
from vla.data.annotate import annotate_episodes
from vla.data.augment import make_augment
from vla.data.cache import build_frame_cache
from vla.data.dataset import VLADataset, collate
from vla.data.episodes import DataError, Episode, LoadResult, skip_or_raise
from vla.data.grounding import dataset_grounding
from vla.data.isaac import load_isaac_episodes
from vla.data.limits import check_prompt_tokens
from vla.data.pickle_demos import load_pickle_demos
from vla.data.quality import FilterResult, filter_episodes
from vla.data.statistics import compute_statistics, split_episodes
from vla.model.modeling import OpenVLA
from vla.model.proprio import proprio_stats

log = logging.getLogger(__name__)


def load_episodes(
    cfg: DataConfig, cache_dir: str | Path, expected_action_dim: int | None = None
) -> LoadResult:
    if cfg.format == "pickle":
        return load_pickle_demos(
            cfg.root,
            join_gripper=cfg.join_gripper,
            next_action=cfg.next_action,
            on_error=cfg.on_error,
            expected_action_dim=expected_action_dim,
        )
    if cfg.format == "lerobot":
        from vla.data.lerobot import load_lerobot_dataset

        return load_lerobot_dataset(
            cfg.root,
            camera=cfg.camera,
            state_keys=cfg.state_keys,
            action_key=cfg.action_key,
            on_error=cfg.on_error,
            expected_action_dim=expected_action_dim,
        )
    if cfg.format == "hdf5":
        from vla.data.hdf5 import load_hdf5_demos

        return load_hdf5_demos(
            cfg.root,
            camera=cfg.camera,
            state_keys=cfg.state_keys,
            action_key=cfg.action_key,
            instruction=cfg.instruction,
            on_error=cfg.on_error,
            expected_action_dim=expected_action_dim,
        )
    if cfg.root is None:  # data=sample: the simulator writes the episodes (entry points ask it first)
        raise ConfigError(
            "data=sample has no episodes yet: generate them with vla.sim.episodes.resolve_sample_data(data, "
            "sim, cache_dir) (train.py does) or scripts/make_sample_data.py, then pass the result"
        )
    root = Path(cfg.root)
    return load_isaac_episodes(root, on_error=cfg.on_error, expected_action_dim=expected_action_dim)


def prepare_episodes(
    cfg: DataConfig, cache_dir: str | Path, expected_action_dim: int | None = None
) -> tuple[LoadResult, FilterResult]:
    """Load, filter (`data.filter`, `data.success_only`) and annotate (`data.instructions`) the episodes.
    `FilterResult.kept` holds the episodes to train on."""
    result = load_episodes(cfg, cache_dir, expected_action_dim=expected_action_dim)
    for skipped in result.skipped:
        log.warning("skipped episode %s: %s", skipped.episode_id, skipped.reason)
    filtered = filter_episodes(result.episodes, cfg.filter, success_only=cfg.success_only)
    kept = annotate_episodes(filtered.kept, cfg.instructions, cfg.annotation)
    return result, filtered._replace(kept=kept)


class ShuffleSampler(Sampler[tuple[int, int]]):
    """Shuffles with (seed, epoch), and can start an epoch part-way: what exact resume needs.

    Yields `(epoch, index)`: the dataset seeds each sample's augmentation from it, so the pixels of a
    resumed epoch are the ones the uninterrupted run saw (even in persistent workers)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch = -1  # the epoch being iterated
        self.skip = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.epoch += 1
        order = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()
        skip, self.skip = self.skip, 0
        return iter([(self.epoch, i) for i in order[skip:]])


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in its checkpoints (`state_dict`) and restores.

    Each epoch's iterator draws its workers' base seed from the loader's own generator, seeded from
    (seed, epoch): a plain DataLoader draws it from torch's global generator, so the iterator of a new
    epoch, made between a checkpoint and the next step, moved the generator that LoRA dropout and
    token noise draw from, and a run resumed from an end-of-epoch checkpoint drew other numbers."""

    def __init__(self, dataset, *, sampler: ShuffleSampler, consumed_batches, **kwargs):
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.shuffle_sampler = sampler
        self.consumed_batches = consumed_batches  # () -> batches of this epoch already trained on

    def __iter__(self):
        self.generator.manual_seed(self.shuffle_sampler.seed + self.shuffle_sampler.epoch + 1)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.shuffle_sampler.epoch, "consumed": int(self.consumed_batches())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # The next __iter__ re-enters the saved epoch, minus what was already consumed.
        self.shuffle_sampler.epoch = state["epoch"] - 1
        self.shuffle_sampler.skip = state["consumed"] * self.batch_size


def model_state_stats(model: OpenVLA, statistics: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The proprio statistics samples are normalized with for `model`: None when it reads no state."""
    if not model.proprio_dim:
        return None
    stats = proprio_stats(statistics[key], key)
    if len(stats["q01"]) != model.proprio_dim:
        raise ConfigError(
            f"the model reads {model.proprio_dim} state values, the data has {len(stats['q01'])}"
        )
    return stats


class VLADataModule(L.LightningDataModule):
    """One DataModule for every data format (`data.format`): sample, Isaac or pickle.

    1. `prepare()`: load, quality-filter (`filter_report` holds the counts train.py logs), annotate,
       split by episode (`data.val_fraction`, `data.split_seed`) and compute the action/proprio
       statistics from the train split only; called before the model exists, which embeds them.
    2. `attach(model)`: the model whose processor and action tokenizer build the samples.
    3. `setup()` (Lightning): the frame cache, then the train set (augmented by `augment`, seeded by
       `seed`, the run's seed) and the validation set (centre-cropped when training crops), both laid out as `layout` says
       (`model.layout`: chunk size, grounding tokens).

    The train loader shuffles resumably (`ShuffleSampler`, `ResumableLoader`): a resumed run sees the
    rest of the interrupted epoch, with the same pixels.
    """

    def __init__(
        self,
        cfg: DataConfig,
        cache_dir: str | Path = ".cache/athena_vla",
        augment: AugmentConfig | None = None,
        seed: int = 0,
        layout: LayoutConfig | None = None,
        proprio: bool = False,
        action_head: str = "tokens",
    ):
        """`layout`: the action layout of the model to train (`model.layout`; default OpenVLA's);
        `proprio`: the model reads the robot state (`model.proprio`), so every episode must have one;
        `action_head`: the model's head (`model.action_head`): a continuous head's grounding values are
        an auxiliary target that some episodes may lack."""
        super().__init__()
        self.cfg = cfg
        self.layout = layout or LayoutConfig()
        self.proprio = proprio
        self.action_head = action_head
        self.cache_dir = cache_dir
        self.augment = augment or AugmentConfig()
        self.seed = seed  # of the training augmentation
        self.train_episodes: list[Episode] = []
        self.val_episodes: list[Episode] = []
        self.statistics: dict[str, Any] | None = None
        self.train_grounding: list[np.ndarray] = []  # per episode (vla.data.grounding); empty when off
        self.val_grounding: list[np.ndarray] = []
        self.report: LoadResult | None = None
        self.filter_report: dict[str, int] | None = None  # FilterResult.report(): kept / dropped per rule
        self.model: OpenVLA | None = None

    @classmethod
    def for_run(cls, data: DataConfig, cfg: Any) -> VLADataModule:
        """The DataModule a training-like stage (train.py, scripts/bench_data.py) builds from its config:
        `data` (resolved, for data=sample) with the stage's cache, augmentation, seed and the samples'
        layout and state input from `cfg.model`."""
        return cls(
            data,
            cache_dir=cfg.paths.cache_dir,
            augment=cfg.augment,
            seed=cfg.seed,
            layout=cfg.model.layout,
            proprio=cfg.model.proprio,
            action_head=cfg.model.action_head,
        )

    @property
    def grounding_written(self) -> bool:
        """The model writes its grounding values as tokens (token head, or the l1 head's grounding tokens
        first), so episodes without values are taught the tokens their actions read (`VLADataset`)."""
        return self.action_head == "tokens" or self.layout.grounding_tokens_first

    def prepare(
        self, required_action_dim: tuple[int, str] | None = None, prompt_budget: Any = None
    ) -> dict[str, Any]:
        """Load, validate, filter, annotate and split the episodes and compute statistics (before the
        model exists, since the model's statistics come from here). Returns `{dataset_key: statistics}`.

        `required_action_dim`: (dimension, why) when the data must match an existing model's actions
        (see `vla.training.runs.required_action_dim`); other episodes fail (or are skipped with on_error=skip).
        `prompt_budget`: the model's `vla.training.build.PromptBudget`; an episode whose instruction's
        sample needs more positions than the language model has fails the same way (before the
        statistics: a skipped episode is not in them).
        """
        expected = None
        if required_action_dim is not None:
            expected, why = required_action_dim
            log.info("data: actions must have %d dimensions (%s)", expected, why)
        result, filtered = prepare_episodes(self.cfg, self.cache_dir, expected_action_dim=expected)
        if prompt_budget is not None:
            filtered = filtered._replace(kept=self._fitting_prompts(filtered.kept, prompt_budget, result))
        self.report = result
        self.filter_report = filtered.report()
        self.train_episodes, self.val_episodes = split_episodes(
            filtered.kept, self.cfg.val_fraction, self.cfg.split_seed
        )
        if not self.val_episodes:
            raise DataError(
                f"only {len(filtered.kept)} usable episode(s): need at least 2 for a train/val split"
            )
        if self.proprio:
            stateless = [e for e in filtered.kept if e.state_dim == 0]
            if stateless:
                first = stateless[0]
                raise DataError(
                    f"model.proprio=true needs a robot state at every step, but episode {first.episode_id!r} "
                    f"({first.path}) has none ({len(stateless)} of {len(filtered.kept)} episodes); Isaac "
                    "episodes keep it as `states` or `observations`, pickled demos as `robot_state`"
                )
        # Checked here, before the model is built: grounding needs targets in some episode; the others
        # (e.g. the posture tasks beside reach scenes) add no grounding loss to a regressed grounding,
        # and are taught the middle bin's tokens where the grounding is written (`grounding_written`).
        self.train_grounding = dataset_grounding(self.train_episodes, self.layout.grounding, optional=True)
        missing = sum(bool(np.isnan(v).any()) for v in self.train_grounding)
        if self.layout.grounding and self.grounding_written and missing:
            # Without labels there (docs/experiments/athena_suite.md, cf2_gfirst) prediction wrote untaught
            # grounding tokens before those episodes' actions: the posture families fell to 0%.
            log.info(
                "%d of %d training episodes have no grounding values; the grounding is written as tokens, "
                "so the model is taught to write the middle bin's tokens for them",
                missing, len(self.train_grounding),
            )  # fmt: skip
        self.val_grounding = dataset_grounding(
            self.val_episodes, self.layout.grounding, optional=True, require_any=False
        )
        stats = compute_statistics(self.train_episodes, mask_dims=self.cfg.mask_dims)
        self.statistics = {self.cfg.dataset_key: stats}
        log.info(
            "data: %d train / %d val episodes, %d train steps, action dim %d, state dim %d",
            len(self.train_episodes),
            len(self.val_episodes),
            sum(e.num_steps for e in self.train_episodes),
            self.train_episodes[0].action_dim,
            self.train_episodes[0].state_dim,
        )
        return self.statistics

    def _fitting_prompts(self, episodes: list[Episode], budget: Any, result: LoadResult) -> list[Episode]:
        """The episodes whose every instruction fits the model's positions with the image, state,
        grounding and action tokens of a sample (transformers only warns past them, then the run runs
        out of memory); the others raise a DataError naming the episode, or are skipped (on_error=skip)."""
        if not budget.max_positions:
            return episodes
        kept: list[Episode] = []
        needed: dict[str, int] = {}
        one_per_step = self.layout.chunk_positions_of(self.action_head) == "steps"  # else D per step
        for episode in episodes:
            n_actions = self.layout.chunk_size * (1 if one_per_step else episode.action_dim)
            texts = {episode.instruction, *episode.instructions, *(episode.step_instructions or [])}
            for text in texts - needed.keys():  # an instruction shared by many episodes: tokenized once
                needed[text] = budget.positions(text, 0)
            worst = max(needed[text] for text in texts) + n_actions
            try:
                where = f"episode {episode.episode_id!r} ({episode.path})"
                check_prompt_tokens(worst, budget.max_positions, where)
            except DataError as error:
                skip_or_raise(error, self.cfg.on_error, result.skipped, episode.episode_id)
                continue
            kept.append(episode)
        return kept

    def attach(self, model: OpenVLA) -> None:
        self.model = model

    def setup(self, stage: str | None = None) -> None:
        if self.statistics is None:
            self.prepare()
        if self.model is None:
            raise RuntimeError("VLADataModule.attach(model) must be called before training")
        key = self.cfg.dataset_key
        stats = self.statistics[key]["action"]
        state_stats = model_state_stats(self.model, self.statistics, key)
        transform = self.model.processor.image_transform
        # The samples follow the model's layout; validation (and later prediction) must centre-crop
        # what training randomly crops.
        layout = self.model.layout
        wanted = (self.layout.chunk_size, self.layout.grounding, self.augment.crop_scale)
        if (layout.chunk_size, layout.grounding, layout.center_crop_scale) != wanted:
            raise ConfigError(
                f"the model's layout ({layout.chunk_size}-step chunks after {layout.grounding} grounding "
                f"tokens, centre crop {layout.center_crop_scale}) is not this data's (model.layout.chunk_size="
                f"{wanted[0]}, model.layout.grounding={wanted[1]}, augment.crop_scale={wanted[2]}); build it "
                "with vla.training.build.build_base_model(model_cfg, quant, stats, center_crop_scale)"
            )
        episodes = [*self.train_episodes, *self.val_episodes]
        n_train = len(self.train_episodes)
        train_frames = val_frames = None
        if self.cfg.cache_images:
            frames = build_frame_cache(episodes, transform.resize, transform.size, self.cache_dir)
            train_frames, val_frames = frames.subset(0, n_train), frames.subset(n_train, len(episodes))
        make = functools.partial(
            VLADataset,
            processor=self.model.processor,
            action_tokenizer=self.model.action_tokenizer,
            action_stats=stats,
            chunk_size=layout.chunk_size,
            state_stats=state_stats,
            teach_missing_grounding=self.grounding_written,
            step_positions=layout.step_positions if layout.continuous else None,
        )
        augment = make_augment(self.augment, transform.size)
        self.train_set = make(
            self.train_episodes,
            frames=train_frames,
            augment=augment,
            seed=self.seed,
            drop_idle=self.cfg.drop_idle_frames,
            grounding=self.train_grounding,
        )
        if self.cfg.drop_idle_frames:
            # Never empty: every episode's step 0 stays (it has no action before it to repeat).
            kept = len(self.train_set)
            log.info(
                "data.drop_idle_frames: %d of %d training steps are no-ops (the chunk holds the previous "
                "action), left out; %d remain",
                self.train_set.idle_dropped, kept + self.train_set.idle_dropped, kept,
            )  # fmt: skip
        self.val_set = make(self.val_episodes, frames=val_frames, grounding=self.val_grounding)

    def _loader_kwargs(self) -> dict[str, Any]:
        pad = self.model.processor.tokenizer.pad_token_id
        return dict(
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            pin_memory=self.cfg.pin_memory,
            persistent_workers=self.cfg.num_workers > 0,
            collate_fn=functools.partial(collate, pad_id=pad),
        )

    def _consumed_batches(self) -> int:
        # Batches of the current epoch whose optimizer step is done (saved from on_train_batch_end).
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(
            self.train_set,
            sampler=ShuffleSampler(len(self.train_set), self.cfg.split_seed),
            consumed_batches=self._consumed_batches,
            drop_last=len(self.train_set) > self.cfg.batch_size,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        # Its own generator: validating between two steps leaves the global one to training.
        generator = torch.Generator().manual_seed(self.cfg.split_seed)
        return DataLoader(self.val_set, shuffle=False, generator=generator, **self._loader_kwargs())
