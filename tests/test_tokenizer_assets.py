"""The compact Llama-2-layout tokenizer shipped in `vla/model/assets/tokenizer` (built by scripts/build_tokenizer.py)."""

from __future__ import annotations

import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from tests.conftest import ROOT, load_script

ASSETS = ROOT / "vla" / "model" / "assets" / "tokenizer"
REF_TOKENIZER = ROOT.parent / "shared" / "openvla_ref" / "tiny_ckpt"
PROMPT = "In: What action should the robot take to {}?\nOut:"
# Every word of these is a single piece in both this tokenizer and the reference one.
INSTRUCTIONS = [
    "pick up the red block",
    "close the drawer",
    "put the carrot on the plate",
    "move the yellow cup to the right",
    "place the green sponge in the bowl",
    "open the drawer",
    "push the blue block to the left",
]


build_tokenizer = load_script("build_tokenizer")
V = build_tokenizer.VOCAB_SIZE


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(ASSETS))


@pytest.fixture(scope="module")
def ref_tok() -> PreTrainedTokenizerFast:
    if not (REF_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"reference tokenizer not found at {REF_TOKENIZER}")
    return PreTrainedTokenizerFast.from_pretrained(str(REF_TOKENIZER))


def test_rebuild_is_byte_identical(tmp_path):
    build_tokenizer.build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), name
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 150_000


def test_layout(tok):
    assert len(tok) == V + 1
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, V)
    assert tok.convert_ids_to_tokens([3, 13, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]
    # OpenVLA appends the bare '▁' piece to the prompt before it decodes actions.
    assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids("\u2581")) == "\u2581"
    assert tok.padding_side == "right" and tok.model_max_length == 2048


def test_both_loaders_give_the_same_ids(tok):
    raw = tokenizers.Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    for text in [PROMPT.format(i) for i in INSTRUCTIONS] + ["Zebra ü 漢", "  two  spaces\n\nand tabs\t."]:
        assert tok(text)["input_ids"] == raw.encode(text).ids, text


def test_prompt_has_bos_no_eos_and_whole_words(tok):
    ids = tok(PROMPT.format("pick up the red block"))["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    words = ["▁What", "▁action", "▁should", "▁the", "▁robot", "▁take", "▁to", "▁pick", "▁up", "▁the"]
    expected = ["<s>", "▁In", ":", *words, "▁red", "▁block", "?", "<0x0A>", "Out", ":"]
    assert tok.convert_ids_to_tokens(ids) == expected


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_prompt_tokens_match_reference(tok, ref_tok, instruction):
    prompt = PROMPT.format(instruction)
    ours = tok.convert_ids_to_tokens(tok(prompt)["input_ids"])
    assert ours == ref_tok.convert_ids_to_tokens(ref_tok(prompt)["input_ids"])


def test_action_tokens_round_trip(tok):
    prefix = tok("Out:", add_special_tokens=False)["input_ids"]
    for token_id in range(V - 256, V):
        char = tok.decode([token_id])
        assert len(char) == 1 and not char.isascii(), token_id
        assert tok("Out:" + char, add_special_tokens=False)["input_ids"] == [*prefix, token_id]


@pytest.mark.parametrize("text", ["Zebra ü 漢", "grab the 🍎 — quickly!", "x\ty\nz", " leading space"])
def test_unknown_text_round_trips_through_byte_fallback(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
