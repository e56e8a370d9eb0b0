"""Load and save OpenVLA checkpoints in OpenVLA's own folder format.

A folder holds `config.json` (with `norm_stats`), `model.safetensors` or shards with
`model.safetensors.index.json`, the tokenizer files, `preprocessor_config.json`,
`processor_config.json` and, for fine-tunes, `dataset_statistics.json`; a folder laid out like the
Hub's also its remote code (`*_prismatic.py`), which saving carries over with the tokenizer and
processor files as they came (`vla.model.source_files`). Folders are written atomically: into a
temporary sibling, then renamed, with the permissions the umask gives a new folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vla.model.configuration import CheckpointError, OpenVLAConfig
from vla.model.processing import OpenVLAProcessor
from vla.model.quantize import quantize_language_model
from vla.model.source_files import code_files, prune_auto_map

if TYPE_CHECKING:  # the model class calls in here (OpenVLA.from_pretrained / save_pretrained)
    from vla.model.modeling import OpenVLA

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Quantization = Literal["nf4", "int8"] | None
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, downloaded (needs network)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"{text}: checkpoint folder not found")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    except Exception as err:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise CheckpointError(
            f"{text}: not a local folder, and downloading it from the Hugging Face hub failed ({err})"
        ) from None


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


MAX_SAFETENSORS_HEADER = 100 * 2**20  # safetensors' own limit


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with the structure of safetensors file `path` (None: nothing), from its 8-byte
    header length, its JSON header and its size: the tensors' byte ranges must end where the file does."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"its header declares {n:,} bytes, the file has {size:,}"
        try:
            header = json.loads(f.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            end = 8 + n + max(ends, default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if end != size:
        return f"its header describes {end:,} bytes, the file has {size:,}"
    return None


def check_safetensors(path: Path, then: str) -> None:
    """Refuse a truncated, empty or overwritten safetensors file before a loader reads it, naming the
    file and `then` (what to do), instead of safetensors' own wording."""
    problem = _safetensors_problem(path)
    if problem:
        raise CheckpointError(f"{path}: not a complete safetensors file ({problem}); {then}")


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    then = "save or download the model again (was a copy or a save interrupted?)"
    for shard in _shard_files(folder):
        if not shard.is_file():
            raise CheckpointError(f"{shard}: listed in {INDEX_FILE} but missing")
        check_safetensors(shard, then)
        try:
            state.update(load_file(str(shard)))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{shard}: cannot be read as safetensors; {then} ({err})") from None
    return state


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Names and shapes must match exactly; the error lists what was expected and what was found."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: expected {expected[k]}, found {tuple(state[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected but not found: {missing[:8]}")
        if unexpected:
            parts.append(f"{len(unexpected)} found but not expected: {unexpected[:8]}")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shapes: {wrong[:8]}")
        raise CheckpointError(f"{source}: state dict does not match the config; " + "; ".join(parts))


def load_pretrained(
    model_class: type[OpenVLA],
    path_or_id: str | Path,
    dtype: str | torch.dtype | None = None,
    quantization: Quantization = None,
    device: str | torch.device = "cpu",
) -> OpenVLA:
    """Build the model from a checkpoint folder (or hub id): weights, norm_stats and processor.

    `dtype` defaults to the dtype stored in the checkpoint. `quantization` quantizes the language
    model's linear layers with bitsandbytes after loading.
    """
    folder = resolve_checkpoint(path_or_id)
    config = OpenVLAConfig.from_json_file(folder / "config.json")
    stats_file = folder / "dataset_statistics.json"
    if stats_file.is_file():
        # As OpenVLA's own deployment code: a fine-tune's statistics replace the config's.
        try:
            config.norm_stats = json.loads(stats_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{stats_file}: not valid JSON ({err})") from None
    processor = OpenVLAProcessor.from_pretrained(folder, config)
    state = read_state_dict(folder)
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    check_state_dict(model, state, folder)
    if dtype is None:
        dtype = next(iter(state.values())).dtype
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    config.torch_dtype = str(dtype).removeprefix("torch.")
    model.to(device)
    if quantization is not None:
        quantize_language_model(model, quantization, compute_dtype=dtype)
    model.attach_processor(processor)
    # Where the weights came from, as transformers models keep it: PEFT writes it into an adapter's
    # adapter_config.json as base_model_name_or_path (a hub id as given, a folder as an absolute path).
    local = Path(path_or_id).expanduser()
    model.name_or_path = str(local.resolve()) if local.is_dir() else str(path_or_id)
    return model.eval()


def write_failure(path: Path, err: OSError, what: str, then: str = "") -> CheckpointError:
    """The error for an OSError while writing `path` (a full disk, no permission): names the path and
    the reason and says what to do (`then`: what comes after, e.g. how to resume)."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = f"make {path.parent} writable or choose another folder"
    elif err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        todo = "free some space"
    else:
        todo = "check the disk"
    return CheckpointError(f"{path}: cannot {what} ({err.strerror or err}); {todo}{then}")


def _atomic_folder(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(tmp: Path) -> None:
    """The modes `mkdir` / `open` give under the umask (0755 / 0644 for umask 022), for `tmp` and
    everything in it: tempfile's folders and files are private (0700 / 0600)."""
    mask = umask()
    for path in [tmp, *tmp.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def commit_folder(tmp: Path, folder: Path) -> None:
    """Replace `folder` with the fully written `tmp` (a rename: readers never see half a folder),
    readable as any folder the user makes (`publish_permissions`)."""
    publish_permissions(tmp)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)


def save_pretrained(
    model: OpenVLA,
    folder: str | Path,
    dtype: str | torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model` in OpenVLA's format (atomically). `extra_config` keys are added to config.json."""
    from huggingface_hub import save_torch_state_dict

    if getattr(model, "quantization", None):
        raise CheckpointError(
            "cannot save a bitsandbytes-quantized model: save the full-precision model and pass "
            "quantization= when loading"
        )
    if model.processor is None:
        raise CheckpointError("the model has no processor (tokenizer + image transform) to save with it")
    folder = Path(folder)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    stored = str(next(iter(state.values())).dtype).removeprefix("torch.")
    try:
        tmp = _atomic_folder(folder)
    except OSError as err:
        raise write_failure(folder, err, "save the model", ", then save again") from None
    try:
        save_torch_state_dict(state, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        raw = model.config.to_dict()
        raw.update(extra_config or {})
        raw["torch_dtype"] = stored
        # A config.json from a Hub-style folder names the remote code; kept only when that code is saved too.
        prune_auto_map(raw, code_files(model.processor.files))
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        llama = model.language_model.config
        generation = {"bos_token_id": llama.bos_token_id, "eos_token_id": llama.eos_token_id}
        generation["pad_token_id"] = model.config.pad_token_id
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        model.processor.save_pretrained(tmp, fused=model.vision_backbone.fused_featurizer is not None)
        (tmp / "dataset_statistics.json").write_text(json.dumps(model.norm_stats, indent=2) + "\n")
        commit_folder(tmp, folder)
    except OSError as err:  # a full disk: say where and what to do, leave no temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(folder, err, "save the model", ", then save again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
