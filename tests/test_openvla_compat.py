"""OpenVLA's own stack loads what the project writes: a fine-tune of a Hub-style OpenVLA folder,
exported, loads with `AutoModelForVision2Seq` / `AutoProcessor(trust_remote_code=True)` under OpenVLA's
pinned versions (transformers 4.40.1, tokenizers 0.19.1, timm 0.9.10) and predicts the project's action
tokens; the run's adapter applied with PEFT 0.11.1 to OpenVLA's model of the base predicts the adapter
model's tokens; the tiny default model's tokenizer files load in that transformers with the same ids.

Slow: builds (once, cached: tests/openvla_env.py) a separate virtual environment. OpenVLA's code comes
from ../shared/openvla_hf (tests only; the product never ships it) and is skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import OPENVLA_LAYOUT, REF, ROOT
from tests.openvla_env import OPENVLA_HF, openvla_python

pytestmark = pytest.mark.slow

CODE = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
KEY = "compat_23d"  # a new statistics key: the tiny checkpoint's athena_sim holds 7-dim actions

# Runs in OpenVLA's environment: loads the export and the base + adapter with OpenVLA's classes.
OPENVLA_SIDE = r"""
import json, sys
import numpy as np
import torch

# torchvision 0.28.0 is a CUDA build: declare its two compiled ops so that it imports on CPU torch
# (OpenVLA uses only its pure-Python transforms). ../shared/openvla_hf/README.md
lib = torch.library.Library("torchvision", "DEF")
lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

def _vit(kwargs, **arch):
    for key in ("pretrained_cfg", "pretrained_cfg_overlay"):
        kwargs.pop(key, None)
    return VisionTransformer(**arch, **kwargs)

# The tiny reference checkpoint's towers (../shared/openvla_ref/tiny_model_spec.json).
@register_model
def vit_tinyfixture_patch14_reg4_dinov2(pretrained=False, **kwargs):
    return _vit(kwargs, patch_size=14, embed_dim=32, depth=3, num_heads=2, init_values=1e-5,
                reg_tokens=4, no_embed_class=True)

@register_model
def vit_tinyfixture_patch14_siglip_224(pretrained=False, **kwargs):
    return _vit(kwargs, patch_size=14, embed_dim=48, depth=3, num_heads=3, mlp_ratio=3.7362,
                class_token=False, global_pool="map")

import peft, transformers
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForVision2Seq, AutoProcessor, AutoTokenizer

args = json.loads(open(sys.argv[1]).read())
out = {"versions": {"transformers": transformers.__version__, "peft": peft.__version__,
                    "timm": timm.__version__, "tokenizers": __import__("tokenizers").__version__}}

def predict(model, processor):
    # predict_action calls generate on OpenVLA's model (inside PEFT's wrapper): record what it returns.
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    captured = []
    generate = inner.generate
    def capture(*a, **k):
        ids = generate(*a, **k)
        captured.append(ids)
        return ids
    inner.generate = capture
    tokens, actions = [], []
    for image, text in args["samples"]:
        prompt = f"In: What action should the robot take to {text.lower()}?\nOut:"
        inputs = processor(prompt, Image.open(image).convert("RGB"))
        action = model.predict_action(**inputs, unnorm_key=args["key"], do_sample=False)
        actions.append(np.asarray(action).tolist())
        tokens.append(captured[-1][0, -len(action):].tolist())
    return tokens, actions

processor = AutoProcessor.from_pretrained(args["export"], trust_remote_code=True)
out["processor_class"] = type(processor).__name__
model, info = AutoModelForVision2Seq.from_pretrained(
    args["export"], trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True)
out["model_class"] = type(model).__name__
out["loading_info"] = {k: sorted(map(str, v)) for k, v in info.items() if k != "error_msgs"}
out["export_tokens"], out["export_actions"] = predict(model.eval(), processor)

# OpenVLA's deploy code: the fine-tune's statistics from the run's dataset_statistics.json.
base = AutoModelForVision2Seq.from_pretrained(args["base"], trust_remote_code=True, torch_dtype=torch.float32)
base.norm_stats = json.loads(open(args["statistics"]).read())
adapted = PeftModel.from_pretrained(base, args["adapter"]).eval()
out["adapter_tokens"], _ = predict(adapted, AutoProcessor.from_pretrained(args["base"], trust_remote_code=True))

tokenizer = AutoTokenizer.from_pretrained(args["tiny"])
out["tiny_tokenizer_class"] = type(tokenizer).__name__
out["tiny_ids"] = [tokenizer(p)["input_ids"] for p in args["prompts"]]
print(json.dumps(out))
"""


def hub_folder(dst: Path) -> Path:
    """The tiny reference checkpoint laid out like the Hub's openvla-7b: OpenVLA's three files beside
    the weights and config.json's auto_map (its tokenizer_config / processor_config have theirs)."""
    shutil.copytree(REF / "tiny_ckpt", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    for name in CODE:
        shutil.copy(OPENVLA_HF / name, dst / name)
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def randomize_adapter(adapter_dir: Path) -> None:
    """B weights far from their trained-for-2-steps values, so the adapter changes the tokens."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    weights = load_file(str(path))
    gen = torch.Generator().manual_seed(3)
    for name, w in weights.items():
        if "lora_B" in name:
            weights[name] = 0.3 * torch.randn(w.shape, generator=gen)
    save_file(weights, str(path), metadata={"format": "pt"})


def test_openvla_stack_loads_export_and_adapter(tmp_path):
    if not (OPENVLA_HF / "modeling_prismatic.py").is_file():
        pytest.skip(f"OpenVLA's Hugging Face code not found at {OPENVLA_HF} (tests only)")
    if not (REF / "tiny_ckpt" / "config.json").is_file():
        pytest.skip(f"reference checkpoint not found at {REF}")
    start = time.perf_counter()
    python = openvla_python()
    env_s = time.perf_counter() - start

    from data_factories import make_isaac_dataset

    import train as entry
    from tests.conftest import compose_config
    from vla.config import ExportConfig, TrainConfig
    from vla.export.merge import HeldOut, export_run
    from vla.model.modeling import OpenVLA
    from vla.model.tiny import build_tiny_model
    from vla.training.runs import load_run

    src = hub_folder(tmp_path / "openvla_folder")
    make_isaac_dataset(tmp_path / "data", n_episodes=4, steps=6)
    run_dir = tmp_path / "run"
    overrides = [*OPENVLA_LAYOUT, "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    overrides += ["trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.batch_size=2"]
    overrides += ["data=isaac", f"data.root={tmp_path / 'data'}", f"model.pretrained={src}"]
    overrides += [f"data.dataset_key={KEY}", f"run_dir={run_dir}"]
    entry.run(compose_config("train", overrides, TrainConfig))
    randomize_adapter(run_dir / "adapter")
    export = tmp_path / "export"
    export_run(ExportConfig(run=str(run_dir), out_dir=str(export), held_out=4, onnx=False, int8=False))
    for name in CODE:  # carried from the folder the run fine-tuned
        assert (export / "model" / name).read_bytes() == (src / name).read_bytes()

    held = HeldOut.load(export / "heldout.npz")
    samples = []
    for i, (image, text) in enumerate(zip(held.images, held.instructions)):
        Image.fromarray(image).save(tmp_path / f"held_{i}.png")
        samples.append((str(tmp_path / f"held_{i}.png"), text))
    cases = json.loads((REF / "cases_public.json").read_text())["cases"]
    samples += [(str(REF / f"images/case{i}.png"), case["instruction"]) for i, case in enumerate(cases)]

    def ours(model) -> tuple[list, list]:
        preds = [model.predict([Image.open(p).convert("RGB")], [t], constrain=False) for p, t in samples]
        return [p.token_ids.reshape(-1).tolist() for p in preds], [p.actions.reshape(-1) for p in preds]

    export_tokens, export_actions = ours(OpenVLA.from_pretrained(export / "model"))
    adapter_tokens, _ = ours(load_run(run_dir, merge=False))
    tiny = build_tiny_model().save_pretrained(tmp_path / "tiny")
    tiny_tokenizer = OpenVLA.from_pretrained(tiny).processor.tokenizer
    prompts = [f"In: What action should the robot take to {t.lower()}?\nOut:" for _, t in samples]
    prompts += ["Zebra ü 漢", "  two  spaces\n\nand tabs\t."]

    args = {
        "export": str(export / "model"),
        "base": str(src),
        "adapter": str(run_dir / "adapter"),
        "statistics": str(run_dir / "dataset_statistics.json"),
        "key": KEY,
        "samples": samples,
        "tiny": str(tiny),
        "prompts": prompts,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "openvla_side.py").write_text(OPENVLA_SIDE)
    theirs_start = time.perf_counter()
    result = subprocess.run(
        [str(python), str(tmp_path / "openvla_side.py"), str(tmp_path / "args.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
    )
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    theirs_s = time.perf_counter() - theirs_start

    assert theirs["versions"]["transformers"] == "4.40.1" and theirs["versions"]["peft"] == "0.11.1"
    assert theirs["processor_class"] == "PrismaticProcessor"  # not a bare tokenizer
    assert theirs["model_class"] == "OpenVLAForActionPrediction"
    assert theirs["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    assert theirs["export_tokens"] == export_tokens
    np.testing.assert_allclose(np.asarray(theirs["export_actions"]), np.stack(export_actions), atol=1e-5)
    assert theirs["adapter_tokens"] == adapter_tokens
    base_tokens, _ = ours(OpenVLA.from_pretrained(src))  # the adapter really changes the prediction
    assert base_tokens != adapter_tokens
    assert theirs["tiny_ids"] == [tiny_tokenizer(p)["input_ids"] for p in prompts]

    # scripts/predict.py checkpoint=<run folder>, as a user runs it.
    predicted = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "predict.py"), f"checkpoint={run_dir}"]
        + [f"image={samples[0][0]}", f"instruction='{samples[0][1]}'", "constrain=false"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert predicted.returncode == 0, predicted.stderr[-4000:]
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["action_token_ids"] == adapter_tokens[0]
    print(
        f"openvla env {env_s:.0f} s, OpenVLA side {theirs_s:.0f} s, total {time.perf_counter() - start:.0f} s"
    )
