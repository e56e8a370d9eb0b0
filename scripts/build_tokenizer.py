"""Build the tiny model's compact Llama-2-layout tokenizer into `vla/model/assets/tokenizer/`.

python scripts/build_tokenizer.py [--out vla/model/assets/tokenizer]

Offline and deterministic: BPE merges are learned with `tokenizers` on a corpus generated here from
OpenVLA prompts of robot instructions, so running it twice writes byte-identical files. Layout of the
base vocabulary (VOCAB_SIZE ids), as in Llama-2 / OpenVLA:

    0 <unk>, 1 <s>, 2 </s>, 3..258 byte fallback <0x00>..<0xFF> ('\\n' -> 13),
    259 '▁', 260..353 the printable ASCII characters '!'..'~', then the learned merges,
    VOCAB_SIZE-256..VOCAB_SIZE-1 the action tokens (single rare CJK characters),

and <PAD> is added at id VOCAB_SIZE, as OpenVLA's converter does.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

VOCAB_SIZE = 1024
N_ACTION_TOKENS = 256  # OpenVLA maps action bin i to token id VOCAB_SIZE - 1 - i
# CJK Extension A: single characters that robot instructions never contain, like the rare CJK pieces
# at the end of Llama-2's vocabulary that OpenVLA overwrites with actions.
ACTION_FIRST_CODEPOINT = 0x3400
SPECIALS = ("<unk>", "<s>", "</s>")
PAD = "<PAD>"
METASPACE = "\u2581"
ASCII = [chr(c) for c in range(0x21, 0x7F)]  # a space is never a piece: the normalizer makes it '▁'
N_MERGES = VOCAB_SIZE - N_ACTION_TOKENS - len(SPECIALS) - 256 - 1 - len(ASCII)

PROMPT = "In: What action should the robot take to {}?\nOut:"
SIDES = ("left", "right")
COLORS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown", "gray")
TABLETOP = ("ball", "block", "cube", "cup", "bottle", "can", "sponge", "carrot", "banana", "mug", "bag")
KITCHEN = ("spoon", "knife", "fork", "jar", "glass", "apple", "lemon")
DESK = ("towel", "cloth", "marker", "pen", "book", "toy")
OBJECTS = TABLETOP + KITCHEN + DESK
PLACES = ("plate", "bowl", "box", "tray", "table", "shelf", "basket", "drawer", "pot", "pan", "sink")
SPATIAL = ("on", "in", "into", "onto", "next to", "behind", "in front of", "under", "near", "inside")
OPENABLE = ("drawer", "door", "microwave", "lid", "gripper", "fridge", "cabinet", "oven", "faucet")
JOINTS = ("arm", "knee", "leg", "elbow", "wrist", "shoulder", "hip", "ankle", "foot", "hand")
GRASPS = ("pick up", "grasp", "grab", "hold", "push", "pull", "move", "slide", "lift", "drop", "release")
MOTIONS = ("raise", "lift", "lower", "bend", "straighten", "extend", "rotate", "stretch", "flex")
WAYS = ("forward", "backward")
SPEEDS = ("slowly", "quickly", "gently", "carefully")
COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
GESTURES = ("kick", "hop", "spin", "crouch", "lean", "bow", "salute", "shrug", "swing", "tilt", "balance")
TOOLS = ("hammer", "screwdriver", "remote", "phone", "laptop", "chair", "bucket", "broom", "plant", "kettle")


def instructions() -> list[str]:
    """About ten thousand distinct instructions for the humanoid and the table-top tasks of OpenVLA."""
    out = []
    for verb, color, obj, side in itertools.product(("reach", "touch", "point at"), COLORS, OBJECTS, SIDES):
        out.append(f"{verb} the {color} {obj} with the {side} hand")
    for verb, color, obj in itertools.product(GRASPS, COLORS, OBJECTS):
        out.append(f"{verb} the {color} {obj}")
    for verb, obj, prep, place in itertools.product(("put", "place"), OBJECTS, SPATIAL, PLACES):
        out.append(f"{verb} the {obj} {prep} the {place}")
    for verb, side, joint in itertools.product(MOTIONS, SIDES, JOINTS):
        out += [f"{verb} the {side} {joint}", f"{verb} the {side} {joint} above the head"]
    for part, side in itertools.product(("torso", "waist", "head", "body"), SIDES):
        out += [f"turn the {part} {side}", f"turn the {part} to the {side}"]
    for verb, obj in itertools.product(("open", "close"), OPENABLE):
        out += [f"{verb} the {obj}", f"{verb} the {obj} halfway"]
    for verb, way, speed in itertools.product(("walk", "step", "move", "run"), WAYS, SPEEDS):
        out += [f"{verb} {way}", f"{verb} {way} {speed}"]
    for count, way in itertools.product(COUNTS, WAYS + SIDES):
        out.append(f"walk {count} steps {way}")
    for gesture, side in itertools.product(GESTURES, SIDES):
        out += [gesture, f"{gesture} to the {side}"]
    for verb, tool, side in itertools.product(("grab", "hold", "carry", "bring me"), TOOLS, SIDES):
        out += [f"{verb} the {tool}", f"{verb} the {tool} with the {side} hand"]
    for side in SIDES:
        out += [f"wave the {side} hand", f"step to the {side}", f"push the block to the {side}"]
    for color, other in itertools.permutations(COLORS[:4], 2):
        out.append(f"stack the {color} block on the {other} block")
    out += ["turn around", "stand up", "sit down", "kneel down", "squat", "jump", "stop", "clap the hands"]
    out += ["nod the head", "shake the head", "look at the table", "wipe the table with the sponge"]
    out += ["pour the cup into the bowl", "fold the towel", "unfold the cloth", "flip the pan"]
    return sorted(set(out))


def corpus() -> list[str]:
    return [PROMPT.format(text) for text in instructions()]


def learn_merges(texts: list[str]) -> list[tuple[str, str]]:
    """The first N_MERGES merges of BPE on the corpus, never across a word or punctuation.

    Training splits the text into runs of letters (with their leading '▁') and single other
    characters, so merges are Llama-like word pieces; the shipped tokenizer has no pre-tokenizer (as
    Llama-2) and these merges cannot apply across those boundaries there either.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(f"{METASPACE}?[A-Za-z]+|[^A-Za-z]"), behavior="isolated"
    )
    # The alphabet is exactly '▁' + printable ASCII, so no merge can make (or contain) an action character.
    trainer = BpeTrainer(
        vocab_size=1 + len(ASCII) + N_MERGES,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=[METASPACE, *ASCII],
        limit_alphabet=1 + len(ASCII),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    if len(merges) != N_MERGES:
        raise RuntimeError(f"the corpus gave {len(merges)} merges, {N_MERGES} are needed: add instructions")
    return merges


def _normalizer() -> normalizers.Normalizer:
    # Llama-2's tokenizer.json: prepend '▁' to the text, spaces become '▁'; there is no pre-tokenizer.
    return normalizers.Sequence([normalizers.Prepend(METASPACE), normalizers.Replace(" ", METASPACE)])


def build_tokenizer() -> Tokenizer:
    """The tokenizer with Llama-2's pipeline (normalizer, BPE with byte fallback, decoder, BOS template)."""
    merges = learn_merges(corpus())
    actions = [chr(ACTION_FIRST_CODEPOINT + i) for i in range(N_ACTION_TOKENS)]
    pieces = [*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), METASPACE, *ASCII]
    pieces += [left + right for left, right in merges] + actions
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"{VOCAB_SIZE - len(vocab)} pieces of the vocabulary are duplicates")

    bpe = models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = _normalizer()
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(METASPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),  # the space the normalizer prepended
        ]
    )
    # LlamaTokenizerFast: add_bos_token=True, add_eos_token=False.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (*SPECIALS, PAD)])
    return tokenizer


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """tokenizer.json with the BPE merges as "left right" strings: tokenizers >= 0.20 writes them as
    pairs, which the tokenizers 0.19 of OpenVLA's pinned transformers 4.40.1 cannot parse (both read
    strings; no piece holds a space, so the split is unambiguous)."""
    raw = json.loads(tokenizer.to_str())
    raw["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    return json.dumps(raw, indent=2, ensure_ascii=False)


def tokenizer_config() -> dict:
    """tokenizer_config.json as OpenVLA's checkpoints carry it, without the processor entries."""
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in [*enumerate(SPECIALS), (VOCAB_SIZE, PAD)]
    }
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": PAD,
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict:
    pad = {"content": PAD, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"bos_token": "<s>", "eos_token": "</s>", "pad_token": pad, "unk_token": "<unk>"}


def build(out_dir: str | Path) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json to `out_dir`; returns sizes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": tokenizer_json(build_tokenizer()),
        "tokenizer_config.json": json.dumps(tokenizer_config(), indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps(special_tokens_map(), indent=2, ensure_ascii=False),
    }
    for name, text in files.items():
        (out_dir / name).write_text(text + "\n", encoding="utf-8")
    return {name: (out_dir / name).stat().st_size for name in files}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = Path(__file__).resolve().parents[1] / "vla" / "model" / "assets" / "tokenizer"
    parser.add_argument("--out", type=Path, default=default, help="output folder")
    for name, size in build(parser.parse_args().out).items():
        print(f"{name}: {size} bytes")


if __name__ == "__main__":
    main()
