"""The files the project writes, in the form OpenVLA's own stack reads (transformers 4.40.1, tokenizers
0.19.1, PEFT 0.11.1): tokenizer and processor files kept from the source folder, auto_map only beside
the code it names, adapter configs older PEFT accepts, ordinary permissions. test_openvla_compat.py
(slow) loads them in that stack."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vla.model.modeling import OpenVLA

ASSETS = ROOT / "vla" / "model" / "assets" / "tokenizer"
KEPT = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
)
CODE = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_prismatic.OpenVLAConfig",
    "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
}
# Tokenizer classes transformers 4.40.1's AutoTokenizer resolves for a folder holding only
# tokenizer.json (a class it does not know fails: "Tokenizer class TokenizersBackend does not exist").
OLD_TOKENIZER_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast", "PreTrainedTokenizerFast"}
# Every field of PEFT 0.11.1's LoraConfig and PeftConfig (peft/tuners/lora/config.py, peft/config.py;
# PEFT 0.10.0 has the same). OpenVLA pins 0.11.1, which calls LoraConfig(**adapter_config) and fails
# on any other key.
PEFT_0_11_1_FIELDS = {
    "base_model_name_or_path", "revision", "peft_type", "task_type", "inference_mode", "auto_mapping",
    "r", "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "use_rslora",
    "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "megatron_config", "megatron_core", "loftq_config", "use_dora", "layer_replication",
}  # fmt: skip


def hub_style_copy(ref_dir: Path, dst: Path) -> Path:
    """The tiny reference checkpoint laid out like a Hub folder: remote-code files (stand-ins here:
    the tests check that they travel, not what they run) and auto_map in config.json."""
    shutil.copytree(ref_dir / "tiny_ckpt", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    for name in CODE:
        (dst / name).write_text(f"# stand-in for OpenVLA's {name}\n")
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "auto_map": MODEL_AUTO_MAP}, indent=2))
    return dst


def dangling_auto_map(folder: Path) -> list[str]:
    """auto_map references in the folder's JSON files whose module file the folder lacks."""
    bad = []
    for path in folder.glob("*.json"):
        raw = json.loads(path.read_text())
        for refs in (raw.get("auto_map") or {}).values():
            for ref in refs if isinstance(refs, list) else [refs]:
                if ref and not (folder / (ref.split(".")[0] + ".py")).is_file():
                    bad.append(f"{path.name}: {ref}")
    return bad


def test_hub_folder_files_are_kept_byte_for_byte(ref_dir, tmp_path):
    src = hub_style_copy(ref_dir, tmp_path / "src")
    saved = OpenVLA.from_pretrained(src).save_pretrained(tmp_path / "saved")
    for name in (*KEPT, *CODE):
        assert (saved / name).read_bytes() == (src / name).read_bytes(), name
    assert json.loads((saved / "config.json").read_text())["auto_map"] == MODEL_AUTO_MAP
    # Saved again from the saved folder: still the source's bytes.
    again = OpenVLA.from_pretrained(saved).save_pretrained(tmp_path / "again")
    assert all((again / n).read_bytes() == (src / n).read_bytes() for n in (*KEPT, *CODE))


def test_auto_map_only_beside_the_files_it_names(ref_dir, tmp_path):
    # tiny_ckpt's tokenizer_config.json and processor_config.json name processing_prismatic.py, which
    # it does not have; a config.json auto_map without the code (as the issue found in exports) too.
    src = tmp_path / "src"
    shutil.copytree(ref_dir / "tiny_ckpt", src)
    for f in src.iterdir():
        f.chmod(0o644)
    assert dangling_auto_map(src)  # the premise
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "auto_map": MODEL_AUTO_MAP}))
    saved = OpenVLA.from_pretrained(src).save_pretrained(tmp_path / "saved")
    assert dangling_auto_map(saved) == [] and not list(saved.glob("*.py"))
    assert "auto_map" not in json.loads((saved / "config.json").read_text())
    assert (saved / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    # Only auto_map went: the rest of the rewritten files is the source's.
    for name in ("tokenizer_config.json", "processor_config.json"):
        theirs = json.loads((src / name).read_text())
        theirs.pop("auto_map")
        assert json.loads((saved / name).read_text()) == theirs, name


def test_tiny_model_folder_has_old_transformers_tokenizer_files(tmp_path):
    from vla.model.tiny import build_tiny_model

    saved = build_tiny_model().save_pretrained(tmp_path / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (saved / name).read_bytes() == (ASSETS / name).read_bytes(), name
    assert dangling_auto_map(saved) == [] and not list(saved.glob("*.py"))
    tokenizer = json.loads((saved / "tokenizer.json").read_text())
    # tokenizers < 0.20 parses BPE merges only as "left right" strings.
    merges = tokenizer["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in OLD_TOKENIZER_CLASSES
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)  # Llama-2's
    added = {str(t["id"]): t["content"] for t in tokenizer["added_tokens"]}
    assert {k: v["content"] for k, v in config["added_tokens_decoder"].items()} == added
    specials = json.loads((saved / "special_tokens_map.json").read_text())
    assert specials["pad_token"]["content"] == config["pad_token"] == "<PAD>"


def test_saved_folders_get_umask_permissions(ref_model, tmp_path):
    for mask in (0o022, 0o027):
        old = os.umask(mask)
        try:
            folder = ref_model.save_pretrained(tmp_path / f"m{mask:o}")
        finally:
            os.umask(old)
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
        assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o666 & ~mask}


@pytest.mark.parametrize("extra", [False, True])
def test_adapter_config_loads_with_peft_0_11_signature(ref_dir, tmp_path, extra):
    """What PEFT 0.11.1 does with adapter_config.json: LoraConfig(**keys). Every key must be one of its
    fields, and PEFT here must read back the adapter as trained; base_model_name_or_path names the base."""
    from peft import PeftConfig

    from vla.config import LoraConfig
    from vla.training.adapters import apply_adapter
    from vla.training.runs import save_trained

    if extra:  # a continuous head and a state projector are saved as PEFT modules_to_save
        from tests.test_l1_head import tiny

        base = tiny("l1", proprio=True)
    else:
        base = OpenVLA.from_pretrained(ref_dir / "tiny_ckpt")
    lora = LoraConfig(name="t", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = apply_adapter(base, lora)
    folder = save_trained(model, tmp_path, full=False)
    raw = json.loads((folder / "adapter_config.json").read_text())
    assert set(raw) <= PEFT_0_11_1_FIELDS, sorted(set(raw) - PEFT_0_11_1_FIELDS)
    if not extra:  # (the tiny model built here has no folder; train.py's runs name base_model/)
        assert raw["base_model_name_or_path"] == str((ref_dir / "tiny_ckpt").resolve())
    loaded = PeftConfig.from_pretrained(str(folder))
    assert (loaded.r, loaded.lora_alpha, sorted(loaded.target_modules)) == (4, 8, ["q_proj", "v_proj"])
    assert sorted(loaded.modules_to_save or []) == (["action_head", "proprio_projector"] if extra else [])
    # (safetensors creates its files 0600)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o666 & ~_umask()}


def test_unknown_keys_at_other_values_are_kept(tmp_path):
    """Leaving out a key that is not at its default would change the adapter: it stays (and is reported)."""
    from peft import LoraConfig as PeftLoraConfig

    from vla.training.adapters import make_adapter_config_portable

    PeftLoraConfig(r=2, target_modules=["q_proj"], lora_bias=True).save_pretrained(str(tmp_path))
    assert make_adapter_config_portable(tmp_path) == ["lora_bias"]
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["lora_bias"] is True and set(raw) - PEFT_0_11_1_FIELDS == {"lora_bias"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
