"""What a training run leaves behind, and loading it back as a ready-to-predict OpenVLA.

<run>/config.yaml              the resolved config
<run>/dataset_statistics.json  the fine-tune's statistics (OpenVLA format)
<run>/base_model/              the base, when it was not a pretrained checkpoint (the tiny model)
<run>/adapter/                 PEFT adapter (PeftModel.from_pretrained(base, <run>/adapter))
<run>/model/                   the whole model, for lora=full
<run>/checkpoints/last.ckpt    Lightning's checkpoint, for ckpt_path= resume
<run>/plots/                   validation plots
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from vla.config import RUN_OVERRIDE_GROUPS, ConfigError, TrainConfig, to_object
from vla.data.statistics import load_statistics
from vla.model.checkpoint import DTYPES, check_safetensors, commit_folder, write_failure
from vla.model.configuration import CheckpointError, OpenVLAConfig
from vla.model.modeling import OpenVLA
from vla.model.quantize import dequantize_language_model, quantize_language_model
from vla.outputs import numbered
from vla.training.adapters import make_adapter_config_portable
from vla.training.build import training_layout


def required_action_dim(ckpt_path: str | None, dataset_key: str) -> tuple[int, str] | None:
    """The action dimension the training data must have when resuming (`ckpt_path`), and where that
    requirement comes from: the resumed run's tokens and statistics have that run's action size."""
    if ckpt_path:
        run_dir = Path(ckpt_path) if Path(ckpt_path).is_dir() else Path(ckpt_path).parent.parent
        stats_file = run_dir / "dataset_statistics.json"
        if stats_file.is_file():
            stats = load_statistics(stats_file)
            if dataset_key in stats:
                return len(stats[dataset_key]["action"]["q01"]), f"the resumed run's {stats_file}"
    return None


def check_pretrained_key(pretrained: str | None, dataset_key: str, stats: dict[str, Any]) -> None:
    """A pretrained model that already holds statistics under `dataset_key` (OpenVLA's own keys, or a
    merged fine-tune) decodes that key's number of action tokens: data with another action size fails
    here, naming the key and the way out (a new key), instead of later and less clearly."""
    config_file = Path(pretrained).expanduser() / "config.json" if pretrained else None
    if config_file is None or not config_file.is_file():
        return
    norm_stats = OpenVLAConfig.from_json_file(config_file).norm_stats or {}
    if dataset_key not in norm_stats:
        return
    theirs = len(norm_stats[dataset_key]["action"]["q01"])
    ours = len(stats[dataset_key]["action"]["q01"])
    if theirs != ours:
        raise ConfigError(
            f"data.dataset_key={dataset_key!r}: the pretrained model's norm_stats[{dataset_key!r}] "
            f"({config_file}) are for {theirs}-dimensional actions, this data's actions have {ours}. "
            f"Fine-tune under a new key: data.dataset_key=<new name> (e.g. {dataset_key}_{ours}d); the "
            "fine-tune's statistics are saved under that name (predict with unnorm_key=<new name>)"
        )


def claim_run_dir(run_dir: Path) -> Path:
    """A run folder no other run writes into: `run_dir` itself when this process is the first to
    create its config.yaml there (an exclusive create: two runs given the same `run_dir=` share it;
    Hydra's own folders are already claimed by `${claim_dir:...}`), else the first free `<run_dir>_2`,
    `<run_dir>_3`, ... (`vla.outputs.numbered`, created exclusively too).
    The claim is an empty config.yaml that `save_run_config` fills. Returns the folder claimed."""
    for folder in numbered(run_dir, 999):
        try:
            folder.mkdir(parents=True, exist_ok=folder == run_dir)  # Hydra makes run_dir, not the others
            with open(folder / "config.yaml", "x"):
                pass
            return folder
        except FileExistsError:
            continue
        except OSError as err:
            raise CheckpointError(
                f"{folder}: cannot create the run folder ({err.strerror}); check paths.output_dir"
            ) from None
    raise CheckpointError(f"{run_dir}: 999 runs already use this name; pass run_name= or paths.output_dir=")


def save_run_config(run_dir: Path, cfg: Any) -> None:
    """The resolved config as <run>/config.yaml (through a temporary sibling and a rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a temporary sibling and a rename; an OSError (a full disk) names the
    path, says what to do and leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path}: cannot write ({err.strerror}); free some space or choose another paths.output_dir"
        ) from None


def save_trained(model: Any, run_dir: Path, full: bool) -> Path:
    """Adapters in PEFT's folder form, or the whole model for full fine-tuning (atomically)."""
    if full:
        return model.save_pretrained(run_dir / "model")
    target = run_dir / "adapter"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=run_dir))
    except OSError as err:
        raise write_failure(target, err, "save the adapter") from None
    try:
        # The base is saved on its own (base_model/ or the pretrained id): keep only the adapter weights.
        # base_model_name_or_path comes from the base's `name_or_path` (OpenVLA.from_pretrained's source).
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        make_adapter_config_portable(tmp)
        commit_folder(tmp, target)
    except OSError as err:  # a full disk: say where and what to do, leave no temporary folder
        then = f", then resume with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        raise write_failure(target, err, "save the adapter", then) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writes (last.ckpt, the best ones) through a temporary sibling and a
    rename in the checkpoint's own folder (fsspec's, Lightning's default, writes into the system's
    temporary folder and copies across devices); an OSError (a full disk, no permission) names the file
    and what to do, and leaves neither a temporary nor a partial file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import torch

        if storage_options is not None:
            raise TypeError("storage_options: not supported for local run folders")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            then = f", then resume with ckpt_path={path.parent.parent} (its last complete checkpoint)"
            raise write_failure(path, err, "write the checkpoint", then) from None


def load_model(path: str | Path) -> OpenVLA:
    """An OpenVLA-format folder (or hub id), or a training run folder, as a ready-to-predict model."""
    path = Path(path)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return load_run(path)
    return OpenVLA.from_pretrained(path)


def load_run(run_dir: str | Path, merge: bool = True) -> nn.Module:
    """A training run folder -> OpenVLA with the fine-tune's statistics (adapters merged by default;
    `merge=False`: the PEFT model as trained). See `load_trained`."""
    run_dir = Path(run_dir)
    return load_trained(run_dir, load_train_config(run_dir), merge)


# Keys that define the saved adapter and the layout it learned: PEFT reads r, alpha and the targets
# from adapter/adapter_config.json, so a changed value would be ignored or fail deep in PEFT; another
# quantization, head, chunk size, grounding size or decoding would be another model than the one trained.
LOCKED_KEYS = {
    "lora": ("kind", "r", "alpha", "target_modules", "use_dora"),
    "quantization": ("method",),
    "model": ("action_head", "proprio", "film"),
    "model.layout": ("chunk_size", "grounding", "parallel_decoding", "grounding_tokens_first"),
}
# What a resumed run must share with the run it continues, beyond LOCKED_KEYS: the base it was built
# from and the statistics key (other keys, e.g. trainer.max_steps or optim.lr, may change on resume).
RESUME_LOCKED_KEYS = {
    **LOCKED_KEYS,
    "model": (*LOCKED_KEYS["model"], "pretrained", "architecture", "dtype", "init_seed", "action_token_init"),
    "data": ("dataset_key",),
}


def check_resume(ckpt_path: str, cfg: TrainConfig) -> Path:
    """The Lightning checkpoint `ckpt_path=` names (a .ckpt file, or a run folder: its
    checkpoints/last.ckpt), checked before anything is built: it exists, is not empty, loads with
    torch's weights_only unpickler (a checkpoint that needs code to load is refused), and the run it
    belongs to was trained with the same RESUME_LOCKED_KEYS as `cfg` (the error names the key and both
    values)."""
    import pickle

    import torch

    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}; pass a .ckpt file or a run folder"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: {path} is empty (a save that was killed?); resume from another "
            f"checkpoint in {path.parent} or start a new run"
        )
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"ckpt_path={ckpt_path}: {path} refused: loading it would run code it names, which no "
                "checkpoint of this project needs; resume only from checkpoints your own runs wrote"
            ) from None
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: {path} is corrupt ({err}); resume from another checkpoint"
        ) from None
    except Exception as err:  # truncated zip, bad magic number, ...
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: {path} is truncated or corrupt ({type(err).__name__}: {err}); resume "
            f"from another checkpoint in {path.parent} or start a new run"
        ) from None
    run_dir = path.parent.parent
    if (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").stat().st_size:
        trained = to_object(migrate_run_config(OmegaConf.load(run_dir / "config.yaml")), TrainConfig)
        changed = first_change(trained, cfg, RESUME_LOCKED_KEYS)
        if changed:
            key, was, now = changed
            raise ConfigError(
                f"{key}={_show(now)}: the run resumed from ({run_dir}) was trained with "
                f"{key}={_show(was)}; a resumed run must train the same model: leave it out "
                "or start a new run"
            )
    return path


def _show(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value)


# Where keys of runs saved before the action layout had one home live now (old key -> new key).
MOVED_KEYS = {
    "data.chunk_size": "model.layout.chunk_size",
    "data.grounding": "model.layout.grounding",
    "model.parallel_decoding": "model.layout.parallel_decoding",
    "model.constrain_action_decoding": "model.layout.constrain_decoding",
    "model.layout.head": "model.action_head",
}

# Keys runs saved before they were removed for doing nothing; dropped when such a run is loaded.
REMOVED_KEYS = ("paths.root_dir", "experiment")


def migrate_run_config(saved: DictConfig) -> DictConfig:
    """A run's saved config.yaml with the keys of MOVED_KEYS in their current place and those of
    REMOVED_KEYS left out."""
    saved = OmegaConf.create(OmegaConf.to_container(saved))
    for old in REMOVED_KEYS:
        parent, _, key = old.rpartition(".")
        node = OmegaConf.select(saved, parent) if parent else saved
        if isinstance(node, DictConfig) and key in node:
            node.pop(key)
    for old, new in MOVED_KEYS.items():
        parent, _, key = old.rpartition(".")
        node = OmegaConf.select(saved, parent)
        if isinstance(node, DictConfig) and key in node:
            OmegaConf.update(saved, new, node.pop(key), force_add=True)
    return saved


def load_train_config(run_dir: Path, overrides: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
    """The run's saved config.yaml, with `overrides` ({"model": {"pretrained": DIR}, "data": {...}})
    merged on top and checked by the same schema (TrainConfig): an unknown key fails naming it and
    its group's keys; a key of LOCKED_KEYS fails saying what the run was trained with."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{run_dir}: not a training run (no config.yaml)")
    saved = migrate_run_config(OmegaConf.load(config_file))
    trained = to_object(saved, TrainConfig)
    overrides = {group: values for group, values in (overrides or {}).items() if values}
    if not overrides:
        return trained
    for group in overrides:
        if group not in RUN_OVERRIDE_GROUPS:
            raise ConfigError(
                f"{group}: only keys of {list(RUN_OVERRIDE_GROUPS)} of the run can be overridden"
            )
    try:
        cfg = to_object(OmegaConf.merge(saved, overrides), TrainConfig)
    except OmegaConfBaseException as err:
        key = err.full_key or "?"
        parent = OmegaConf.select(OmegaConf.structured(TrainConfig), key.rpartition(".")[0])
        valid = f"; valid keys there: {sorted(parent)}" if isinstance(parent, DictConfig) else ""
        reason = str(err.msg).splitlines()[0]  # the rest repeats the key and the types
        raise ConfigError(f"{key}: {reason} (overriding {config_file}){valid}") from None
    changed = first_change(trained, cfg, LOCKED_KEYS)
    if changed:
        key, was, now = changed
        raise ConfigError(
            f"{key}={now!r}: the adapter in {run_dir} was trained with "
            f"{key}={was!r} ({config_file}); it cannot change after training (leave it out)"
        )
    return cfg


def first_change(
    trained: TrainConfig, cfg: TrainConfig, keys: dict[str, tuple[str, ...]]
) -> tuple[str, Any, Any] | None:
    """The first of `keys` ({group: keys}) whose value differs between `trained` and `cfg`, as
    ("group.key", trained value, new value); None when all agree."""
    was_cfg, now_cfg = OmegaConf.structured(trained), OmegaConf.structured(cfg)
    for group, names in keys.items():
        for name in names:
            was = OmegaConf.select(was_cfg, f"{group}.{name}")
            now = OmegaConf.select(now_cfg, f"{group}.{name}")
            if was != now:
                return f"{group}.{name}", was, now
    return None


def _load_base(run_dir: Path, cfg: TrainConfig) -> OpenVLA:
    """The base in model.dtype: model.pretrained when set (a hub id or folder at training time, or
    the place it lives now), else the tiny base the run saved in <run>/base_model/."""
    source: str | Path | None = cfg.model.pretrained
    if source is None:
        source = run_dir / "base_model"
        if not source.is_dir():
            raise CheckpointError(
                f"{source}: missing, and the run's model.pretrained is null; if the base model was "
                f"moved, pass model.pretrained=<its folder>"
            )
    return OpenVLA.from_pretrained(source, dtype=DTYPES[cfg.model.dtype])


def _attach_run_settings(model: OpenVLA, run_dir: Path, cfg: TrainConfig) -> None:
    model.config.norm_stats = load_statistics(run_dir / "dataset_statistics.json")
    # A pretrained base's own config.json does not know how this run trained it.
    stats = {cfg.data.dataset_key: model.config.norm_stats[cfg.data.dataset_key]}
    model.set_layout(training_layout(cfg.model, stats, cfg.augment.crop_scale), seed=cfg.model.init_seed)


def load_trained(run_dir: Path, cfg: TrainConfig, merge: bool) -> nn.Module:
    """The run's model, with the fine-tune's statistics and training layout (chunks, centre crop).

    merge=False, the model as trained: the base in model.dtype, for QLoRA quantized the same way
    (bitsandbytes, compute dtype model.dtype) and prepared as training's `apply_adapter` did with
    PEFT's `prepare_model_for_kbit_training` (it upcasts every bf16/fp16 weight that is not quantized
    to float32: vision towers, projector, embeddings, norms, lm_head), then the PEFT adapter.

    merge=True, the adapter merged into the weights it was trained against. Without quantization:
    the base in model.dtype, merged in that dtype. With quantization: the quantized layers are
    dequantized to the values their matmuls used (rounded to the compute dtype, as bitsandbytes does)
    and the whole model becomes float32, since the rest of it was float32 in training. What still
    differs from training for a bf16/fp16 QLoRA run: the merged decoder layers multiply float32
    activations, where training cast activations to the compute dtype for the quantized matmul and
    ran the adapter beside it in float32; the export checks the merged tokens against merge=False.

    A lora=full run's model/ is returned as saved (nothing to merge).
    """
    if (run_dir / "model" / "config.json").is_file():
        model = OpenVLA.from_pretrained(run_dir / "model")
        _attach_run_settings(model, run_dir, cfg)
        return model
    if not (run_dir / "adapter").is_dir():
        raise CheckpointError(f"{run_dir}: not a training run (no config.yaml with adapter/ or model/)")
    from peft import PeftModel, prepare_model_for_kbit_training

    base = _load_base(run_dir, cfg)
    _attach_run_settings(base, run_dir, cfg)
    if cfg.quantization.method:
        quantize_language_model(base, cfg.quantization.method, compute_dtype=DTYPES[cfg.model.dtype])
        prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        if merge:
            dequantize_language_model(base)
            base.float()
    for weights in sorted((run_dir / "adapter").glob("*.safetensors")):
        check_safetensors(
            weights,
            f"the run's adapter is damaged: restore it from a copy, or resume with ckpt_path={run_dir} "
            "(a new run folder continues from its last checkpoint and saves the adapter)",
        )
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    return (peft_model.merge_and_unload() if merge else peft_model).eval()
