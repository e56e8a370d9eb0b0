"""The files a checkpoint folder brings besides its weights and config.json, kept as they came.

Training never changes the tokenizer or the image preprocessing, so a saved folder gets the source
folder's tokenizer and processor files byte for byte: re-saving them with this project's transformers
would rewrite them in a form OpenVLA's pinned transformers 4.40.1 / tokenizers 0.19.1 cannot read
(`tokenizer_class: TokenizersBackend`, BPE merges as pairs, no special_tokens_map.json). A folder laid
out like the Hub's also holds the remote code that `trust_remote_code=True` runs
(`configuration_prismatic.py`, ...) and `auto_map` entries naming it; those files travel with the
folder, and an `auto_map` entry whose file the saved folder lacks is dropped (it would make
`AutoProcessor` / `AutoModelForVision2Seq` fail). The project itself never ships such code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def read_source_files(folder: str | Path) -> dict[str, bytes]:
    """The tokenizer files, processor files and top-level `*.py` (remote code) files in `folder`."""
    folder = Path(folder)
    names = [*TOKENIZER_FILES, *PROCESSOR_FILES, *sorted(p.name for p in folder.glob("*.py"))]
    return {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}


def code_files(files: dict[str, bytes] | list[str]) -> set[str]:
    return {name for name in files if name.endswith(".py")}


def _module_file(reference: str) -> str | None:
    """The local file an auto_map reference ("processing_prismatic.PrismaticProcessor") needs; None
    for a reference into another Hub repository ("org/repo--module.Class")."""
    if "--" in reference:
        return None
    return reference.rsplit(".", 1)[0].replace(".", "/") + ".py"


def prune_auto_map(raw: dict[str, Any], present: set[str]) -> bool:
    """Drop `raw["auto_map"]` entries naming a `.py` file not in `present` (and the auto_map when none
    is left); returns whether anything was dropped."""
    auto_map = raw.get("auto_map")
    if not isinstance(auto_map, dict):
        return False
    kept = {}
    for cls, refs in auto_map.items():
        # AutoTokenizer's entry is a [slow, fast] pair, either of which may be null.
        needed = [_module_file(r) for r in (refs if isinstance(refs, list) else [refs]) if r]
        if all(f is None or f in present for f in needed):
            kept[cls] = refs
    if len(kept) == len(auto_map):
        return False
    if kept:
        raw["auto_map"] = kept
    else:
        del raw["auto_map"]
    return True


def write_source_files(files: dict[str, bytes], folder: Path) -> None:
    """Write `files` into `folder`, byte for byte, but JSON files whose auto_map names a missing file
    (rewritten without those entries)."""
    present = code_files(files)
    for name, data in files.items():
        if name.endswith(".json"):
            raw = json.loads(data)
            if prune_auto_map(raw, present):
                data = (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode()
        (folder / name).write_bytes(data)
