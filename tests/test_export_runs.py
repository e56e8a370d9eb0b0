"""Export and load_run on runs as they are found later: overrides of the saved config (a moved base,
moved data, checked keys), the one loading path for QLoRA (load_run = the adapter model), bf16 QLoRA
checked against the model as trained, and chunked centre-crop runs carried into the exported folder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factories import ACTION_DIM, make_isaac_dataset
from test_export import LORA, export_config, make_run, train_config

from tests.conftest import compose_config
from vla.config import ConfigError, ExportConfig
from vla.data.episodes import DataError
from vla.model.configuration import CheckpointError


@pytest.fixture(scope="module")
def isaac_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isaac")
    make_isaac_dataset(root, n_episodes=4, steps=6)
    return root


def compose_export(overrides: list[str]) -> ExportConfig:
    """scripts/export.py's config for these command-line overrides."""
    return compose_config("export", overrides, ExportConfig)


def test_export_finds_a_moved_base_and_moved_data(tmp_path, isaac_root):
    """The run's base_model/ and data moved after training: model.pretrained= and data.root= on the
    command line point at the new places, and the export checks against the adapter as trained."""
    from vla.export.merge import HeldOut, action_tokens, export_run
    from vla.model.modeling import OpenVLA

    run_dir, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(isaac_root, data)
    _, trained = make_run(run_dir, data, LORA["lora"])
    new_base, new_data = tmp_path / "elsewhere" / "openvla-tiny", tmp_path / "moved_data"
    new_base.parent.mkdir()
    (run_dir / "base_model").rename(new_base)
    data.rename(new_data)
    fast = [f"run={run_dir}", "held_out=4", "onnx=false", "int8=false"]

    with pytest.raises(DataError, match=re.escape(f"{data}: not a folder")):  # the saved data.root is gone
        export_run(compose_export([*fast, f"out_dir={tmp_path / 'a'}"]))
    with pytest.raises(CheckpointError, match=r"base_model: missing.*pass model.pretrained=<its folder>"):
        export_run(compose_export([*fast, f"out_dir={tmp_path / 'b'}", f"data.root={new_data}"]))

    cfg = compose_export(
        [*fast, f"out_dir={tmp_path / 'out'}", f"model.pretrained={new_base}", f"data.root={new_data}"]
    )
    assert cfg.model == {"pretrained": str(new_base)} and cfg.data == {"root": str(new_data)}
    report = export_run(cfg)
    assert report["overrides"] == {"model": {"pretrained": str(new_base)}, "data": {"root": str(new_data)}}
    assert report["merge"].startswith("merged tokens identical")
    samples = HeldOut.load(tmp_path / "out" / "heldout.npz")
    exported = OpenVLA.from_pretrained(tmp_path / "out" / "model")
    np.testing.assert_array_equal(action_tokens(exported, samples), action_tokens(trained, samples))


def test_overrides_are_checked_against_the_schema_and_the_adapter(tmp_path):
    from vla.export.merge import export_run
    from vla.training.runs import load_train_config, save_run_config

    save_run_config(tmp_path, train_config(tmp_path, ["lora=efficient", "lora.r=8", "lora.alpha=16"]))
    cfg = load_train_config(tmp_path, {"model": {"dtype": "bfloat16"}, "lora": {"dropout": 0.0}})
    assert cfg.model.dtype == "bfloat16" and cfg.lora.dropout == 0.0 and cfg.lora.r == 8

    with pytest.raises(ConfigError, match=r"model\.pretraind: .*valid keys there: \[.*'pretrained'"):
        load_train_config(tmp_path, {"model": {"pretraind": "/somewhere"}})
    with pytest.raises(ConfigError, match=r"data\.batch_size: .*"):
        load_train_config(tmp_path, {"data": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"model\.dtype='float64' is not valid; choose one of"):
        load_train_config(tmp_path, {"model": {"dtype": "float64"}})
    adapter_keys = [
        ("lora", "r", 16, "lora.r=8"),
        ("lora", "use_dora", True, "lora.use_dora=False"),
        (
            "lora",
            "target_modules",
            ["q_proj"],
            "lora.target_modules=['q_proj', 'v_proj', 'up_proj', 'down_proj']",
        ),
        ("quantization", "method", "nf4", "quantization.method=None"),
        ("model", "layout", {"chunk_size": 4}, "model.layout.chunk_size=1"),
        ("model", "layout", {"grounding": 2}, "model.layout.grounding=0"),
        ("model", "layout", {"parallel_decoding": True}, "model.layout.parallel_decoding=False"),
    ]
    for group, key, value, trained_with in adapter_keys:
        with pytest.raises(
            ConfigError, match=rf"the adapter in .* was trained with {re.escape(trained_with)}"
        ):
            load_train_config(tmp_path, {group: {key: value}})
    # The key's old place (before model.layout) is no key of the schema any more.
    with pytest.raises(ConfigError, match=r"data\.chunk_size: .*valid keys there: \["):
        load_train_config(tmp_path, {"data": {"chunk_size": 4}})
    # The export fails on a typo before it loads anything (this run has no weights at all).
    with pytest.raises(ConfigError, match=r"model\.dtyp: "):
        export_run(compose_export([f"run={tmp_path}", f"out_dir={tmp_path / 'out'}", "model.dtyp=bfloat16"]))
    assert not (tmp_path / "out").exists()


def test_load_run_of_a_qlora_run_predicts_like_the_adapter_model(tmp_path, isaac_root):
    """load_run merges an NF4 run's adapter into the dequantized NF4 weights it was trained against,
    so its tokens are the trained adapter model's; merging into the full-precision base is not."""
    from peft import PeftModel

    from vla.export.merge import action_tokens, held_out_samples
    from vla.model.modeling import OpenVLA
    from vla.training.runs import load_run

    cfg, trained = make_run(tmp_path, isaac_root, LORA["qlora"])
    samples = held_out_samples(cfg, 6, "val")
    expected = action_tokens(trained, samples)
    np.testing.assert_array_equal(action_tokens(load_run(tmp_path), samples), expected)
    np.testing.assert_array_equal(action_tokens(load_run(tmp_path, merge=False), samples), expected)
    unquantized = PeftModel.from_pretrained(
        OpenVLA.from_pretrained(tmp_path / "base_model"), str(tmp_path / "adapter")
    )
    assert (action_tokens(unquantized.merge_and_unload().eval(), samples) != expected).any()


def test_bf16_qlora_export_checks_against_the_model_as_trained(tmp_path, isaac_root):
    """model.dtype=bfloat16 + nf4: training upcast every weight that is not quantized to float32 (PEFT's
    k-bit preparation); the loaded adapter model has the trained model's dtypes, weight for weight."""
    from vla.export.merge import action_tokens, export_run, held_out_samples
    from vla.training.runs import load_trained

    run_dir = tmp_path / "run"
    cfg, trained = make_run(run_dir, isaac_root, [*LORA["qlora"], "model.dtype=bfloat16"])
    trained_dtypes = {name: p.dtype for name, p in trained.named_parameters()}
    assert trained_dtypes["base_model.model.projector.fc1.weight"] == torch.float32  # upcast in training
    loaded = load_trained(run_dir, cfg, merge=False)
    assert {name: p.dtype for name, p in loaded.named_parameters()} == trained_dtypes
    q_proj = loaded.base_model.model.language_model.model.layers[0].self_attn.q_proj.base_layer
    assert q_proj.compute_dtype == torch.bfloat16
    samples = held_out_samples(cfg, 4, "val")
    np.testing.assert_array_equal(action_tokens(loaded, samples), action_tokens(trained, samples))

    report = export_run(export_config(run_dir, tmp_path / "out", onnx=False, int8=False))
    assert report["merge"].startswith("merged tokens identical")
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["torch_dtype"] == "float32"


def test_chunked_centre_crop_run_exports_like_the_run(tmp_path, isaac_root):
    """A run trained (2 steps) with model.layout.chunk_size=4 augment=openvla: the exported folder
    (merged model and ONNX) predicts [B, 4, D] chunks with the run's tokens, its config.json carries the
    chunk size and the centre crop (its "action_layout") and the statistics, and the crop is applied (frame borders outside it do not
    matter). The base is given as model.pretrained= from a folder whose config.json knows nothing of
    the run, like a hub base."""
    from test_train import train

    from vla.export.merge import HeldOut, action_tokens, export_run, held_out_samples
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.modeling import OpenVLA
    from vla.training.runs import load_run, load_train_config

    run_dir, out, base = tmp_path / "run", tmp_path / "out", tmp_path / "base"
    data = ["data=isaac", f"data.root={isaac_root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    train(run_dir, [*data, "model.layout.chunk_size=4", "augment=openvla"])
    samples = held_out_samples(load_train_config(run_dir), 4, "val")
    expected = action_tokens(load_run(run_dir, merge=False), samples)  # the adapter model, as trained
    (run_dir / "base_model").rename(base)
    raw = json.loads((base / "config.json").read_text())
    del raw["action_layout"]
    assert not {"action_chunk_size", "center_crop_scale"} & set(raw)  # no legacy layout keys either
    (base / "config.json").write_text(json.dumps(raw))

    report = export_run(export_config(run_dir, out, int8=False, model={"pretrained": str(base)}))
    assert report["onnx"]["tokens_identical"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["action_layout"]["chunk_size"] == 4 and config["action_layout"]["center_crop_scale"] == 0.9
    assert config["norm_stats"] == json.loads((run_dir / "dataset_statistics.json").read_text())
    shutil.rmtree(run_dir)

    assert HeldOut.load(out / "heldout.npz").instructions == samples.instructions
    model, policy = OpenVLA.from_pretrained(out / "model"), OnnxPolicy(out / "model", out / "onnx")
    for predictor in (model, policy):
        np.testing.assert_array_equal(action_tokens(predictor, samples), expected)
        pred = predictor.predict(samples.images[:2], samples.instructions[:2])
        assert pred.actions.shape == (2, 4, ACTION_DIM) and pred.token_ids.shape == (2, 4, ACTION_DIM)
    # At 56 px a 0.9-area centre crop keeps rows and columns 1..53: the others never reach the model.
    image = samples.images[0]
    size = model.config.image_size
    frame = np.asarray(model.processor.image_transform.resize(image))
    border = frame.copy()
    border[0], border[size - 2 :], border[:, 0], border[:, size - 2 :] = 0, 255, 0, 255
    for predictor in (model, policy):
        a = predictor.processor([frame], ["x"])["pixel_values"]
        b = predictor.processor([border], ["x"])["pixel_values"]
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_l1_proprio_lora_run_exports_like_the_adapter_model(tmp_path, isaac_root):
    """A LoRA run trained (2 steps) with model.action_head=l1 model.proprio=true and 2 grounding values
    (in the metadata of some episodes only): the export merges the adapter and the trained head, grounding
    head and state projector (PEFT's modules_to_save) into the model folder (its config.json layout and
    safetensors carry them, with the trained values), checks the merged model, its reload and its ONNX
    graph against the adapter model on held-out frames with their robot states, and reports the
    differences; held-out samples drawn at random get states too."""
    from safetensors.torch import load_file
    from test_train import train

    from vla.export.merge import HeldOut, export_run, held_out_samples, normalized_actions, predictions
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.modeling import OpenVLA
    from vla.training.runs import load_run, load_train_config

    run_dir, out = tmp_path / "run", tmp_path / "out"
    root = tmp_path / "isaac"
    shutil.copytree(isaac_root, root)
    for i, meta_file in enumerate(sorted(root.glob("*/metadata.json"))[::2]):
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps({**meta, "grounding": [0.5 - 0.25 * i, -0.5]}))
    data = ["data=isaac", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    head = [
        "model.action_head=l1",
        "model.proprio=true",
        "model.layout.chunk_size=2",
        "model.layout.grounding=2",
    ]
    train(run_dir, [*data, *head, "lora=efficient", "lora.r=8", "lora.alpha=16"])
    samples = held_out_samples(load_train_config(run_dir), 4, "val")
    assert samples.states.shape == (len(samples.images), 47)
    expected = normalized_actions(predictions(load_run(run_dir, merge=False), samples))  # as trained

    report = export_run(export_config(run_dir, out, tensorrt=False))
    assert (report["head"], report["chunk_size"], report["action_dim"], report["proprio_dim"]) == (
        "l1",
        2,
        23,
        47,
    )
    assert report["merge"].startswith("merged normalized actions within 1e-05")
    assert report["merge_max_abs_action_diff"] <= 1e-5 and report["onnx"]["max_abs_action_diff"] <= 1e-5
    assert report["onnx"]["graphs"] == ["chunk.onnx"] and "tokens_identical" not in report["onnx"]
    assert 0 <= report["onnx"]["int8_mean_abs_action_diff"] <= report["onnx"]["int8_max_abs_action_diff"] <= 2
    layout = json.loads((out / "model" / "config.json").read_text())["action_layout"]
    assert (layout["head"], layout["action_dim"], layout["proprio_dim"]) == ("l1", 23, 47)
    merged = load_file(str(out / "model" / "model.safetensors"))
    trained = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    base = load_file(str(run_dir / "base_model" / "model.safetensors"))
    for key in ("action_head.fc_in.weight", "proprio_projector.fc1.weight", "grounding_head.fc_in.weight"):
        torch.testing.assert_close(merged[key], trained[f"base_model.model.{key}"], rtol=0, atol=0)
        assert not torch.equal(merged[key], base[key])  # the trained copy, not the initial module
    assert min(report["modules"][name] for name in ("action_head", "proprio_projector", "grounding_head")) > 0

    saved = HeldOut.load(out / "heldout.npz")
    np.testing.assert_array_equal(saved.states, samples.states)
    for predictor in (OpenVLA.from_pretrained(out / "model"), OnnxPolicy(out / "model", out / "onnx")):
        got = normalized_actions(predictions(predictor, saved))
        assert np.abs(got - expected).max() <= 1e-5
        pred = predictor.predict(saved.images[:2], saved.instructions[:2], proprio=saved.states[:2])
        assert pred.actions.shape == (2, 2, ACTION_DIM) and pred.token_ids is None
        assert pred.grounding.shape == (2, 2)

    random = export_run(
        export_config(run_dir, tmp_path / "random", samples_from="random", onnx=False, int8=False)
    )
    states = HeldOut.load(tmp_path / "random" / "heldout.npz").states
    stats = json.loads((run_dir / "dataset_statistics.json").read_text())["athena_isaac"]["proprio"]
    assert states.shape == (4, 47) and random["merge_max_abs_action_diff"] <= 1e-5
    assert (states >= np.array(stats["q01"]) - 1e-6).all() and (states <= np.array(stats["q99"]) + 1e-6).all()
