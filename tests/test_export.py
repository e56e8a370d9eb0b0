"""Export: merged weights equal base + adapter (LoRA, DoRA, QLoRA), merged tokens equal the adapter
model's, ONNX parity, int8 agreement, a self-contained folder, and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factories import ACTION_DIM, make_isaac_dataset
from safetensors.torch import load_file

from tests.conftest import OPENVLA_LAYOUT, compose_config
from vla.config import ConfigError, ExportConfig, TrainConfig

Q_PROJ = "language_model.model.layers.0.self_attn.q_proj"
# The QLoRA runs' base has random action-token rows: in an untrained model with the default ordinal
# code, neighbouring bins' logits nearly tie, and the rounding between NF4 inference and the merged
# float weights flips greedy tokens by a bin (3% of tokens here); these tests check the merge, exactly.
LORA = {"lora": ["lora=efficient", "lora.r=8", "lora.alpha=16"],
        "dora": ["lora=efficient", "lora.r=8", "lora.alpha=16", "lora.use_dora=true"],
        "qlora": ["lora=efficient", "lora.r=8", "lora.alpha=16", "quantization=nf4",
                  "model.action_token_init=random"]}  # fmt: skip


@pytest.fixture(scope="module")
def isaac_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isaac")
    make_isaac_dataset(root, n_episodes=4, steps=6)
    return root


def train_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    overrides = [
        *OPENVLA_LAYOUT,
        "logger=none",
        "model.architecture.image_size=56",
        *overrides,
        f"run_dir={run_dir}",
    ]
    return compose_config("train", overrides, TrainConfig)


def make_run(run_dir: Path, isaac_root: Path, overrides: list[str]) -> tuple[TrainConfig, torch.nn.Module]:
    """What train.py leaves behind, without the optimizer: base_model/, statistics, config and an
    adapter whose B (and DoRA magnitude) weights are random, so that merging is far from a no-op (as are
    the trained copies of a continuous head and a state projector, PEFT's modules_to_save). Also returns
    the PEFT model itself, as training held it in memory (eval mode)."""
    from vla.data.datamodule import VLADataModule
    from vla.data.statistics import save_statistics
    from vla.model.checkpoint import DTYPES
    from vla.model.quantize import quantize_language_model
    from vla.training.adapters import apply_adapter
    from vla.training.build import build_base_model
    from vla.training.runs import save_run_config, save_trained

    cfg = train_config(run_dir, ["data=isaac", f"data.root={isaac_root}", *overrides])
    save_run_config(run_dir, cfg)
    stats = VLADataModule(cfg.data, layout=cfg.model.layout).prepare()
    save_statistics(run_dir / "dataset_statistics.json", stats)
    base = build_base_model(cfg.model, type(cfg.quantization)(), stats, cfg.augment.crop_scale)
    base.save_pretrained(run_dir / "base_model")
    if cfg.quantization.method:  # as train.py: compute dtype = the base's dtype
        quantize_language_model(base, cfg.quantization.method, compute_dtype=DTYPES[cfg.model.dtype])
    model = apply_adapter(base, cfg.lora)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=gen))
            elif "modules_to_save" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    save_trained(model, run_dir, full=False)
    return cfg, model.eval()


def export_config(run_dir: Path, out: Path, **kwargs) -> ExportConfig:
    return ExportConfig(run=str(run_dir), out_dir=str(out), **{"held_out": 4, **kwargs})


def expected_merged_q_proj(run_dir: Path, kind: str, cfg: TrainConfig) -> torch.Tensor:
    """Base + adapter for layer 0's q_proj, computed here from the saved files (PEFT's formulas:
    W + (alpha / r) B A; DoRA rescales each output row of that to the learned magnitude)."""
    import bitsandbytes as bnb

    w = load_file(str(run_dir / "base_model" / "model.safetensors"))[f"{Q_PROJ}.weight"]
    if kind == "qlora":  # the adapter was trained against the NF4-rounded weights
        packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        w = bnb.functional.dequantize_4bit(packed, state)
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    prefix = f"base_model.model.{Q_PROJ}"
    a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
    merged = w + (cfg.lora.alpha / cfg.lora.r) * b @ a
    if kind == "dora":
        magnitude = adapter[f"{prefix}.lora_magnitude_vector"]
        merged = merged * (magnitude / merged.norm(dim=1))[:, None]
    return merged


@pytest.mark.parametrize("kind", ["lora", "dora", "qlora"])
def test_merge_equals_base_plus_adapter(tmp_path, isaac_root, kind):
    from vla.export.merge import action_tokens, held_out_samples
    from vla.model.modeling import OpenVLA
    from vla.training.runs import load_trained

    cfg, _ = make_run(tmp_path, isaac_root, LORA[kind])
    reference, merged = load_trained(tmp_path, cfg, merge=False), load_trained(tmp_path, cfg, merge=True)
    got = merged.state_dict()[f"{Q_PROJ}.weight"]
    torch.testing.assert_close(got, expected_merged_q_proj(tmp_path, kind, cfg), rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name in merged.state_dict())  # unloaded: a plain OpenVLA

    samples = held_out_samples(cfg, 6, "val")
    adapter_tokens = action_tokens(reference, samples)
    np.testing.assert_array_equal(action_tokens(merged, samples), adapter_tokens)
    # The adapter changes the actions, so a merge that dropped it could not pass the check above.
    base_tokens = action_tokens(OpenVLA.from_pretrained(tmp_path / "base_model"), samples)
    assert (base_tokens != adapter_tokens).any()


def test_export_is_self_contained_and_onnx_matches(tmp_path, isaac_root):
    from vla.export.merge import HeldOut, action_tokens, export_run
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.modeling import OpenVLA

    run_dir, out = tmp_path / "run", tmp_path / "export"
    make_run(run_dir, isaac_root, LORA["lora"])
    report = export_run(export_config(run_dir, out))
    assert report["merge"].startswith("merged tokens identical")
    assert report["onnx"]["tokens_identical"] and report["onnx"]["max_abs_logit_diff"] < 1e-4
    assert report["onnx"]["graphs"] == ["prefix.onnx", "decode.onnx"] and report["modules"] == {}
    assert 0.0 <= report["onnx"]["int8_token_agreement"] <= 1.0
    assert report["onnx"]["int8_max_abs_action_diff"] >= report["onnx"]["int8_mean_abs_action_diff"] >= 0
    assert json.loads((out / "export.json").read_text())["onnx"] == report["onnx"]
    config = json.loads((out / "model" / "config.json").read_text())
    stats = json.loads((run_dir / "dataset_statistics.json").read_text())
    assert config["norm_stats"] == stats and "athena_isaac" in config["norm_stats"]
    assert config["action_layout"]["constrain_decoding"] is True
    assert "constrain_action_decoding" not in config  # the legacy key is gone, the layout has one home

    samples = HeldOut.load(out / "heldout.npz")
    before = action_tokens(OpenVLA.from_pretrained(out / "model"), samples)
    shutil.rmtree(run_dir)  # nothing of the run may be needed any more
    model = OpenVLA.from_pretrained(out / "model")
    pred = model.predict(samples.images[:1], samples.instructions[:1])
    assert pred.actions.shape == (1, ACTION_DIM) and np.isfinite(pred.actions).all()
    np.testing.assert_array_equal(action_tokens(model, samples), before)
    np.testing.assert_array_equal(action_tokens(OnnxPolicy(out / "model", out / "onnx"), samples), before)


def test_merge_mismatch_stops_the_export(tmp_path, isaac_root, monkeypatch):
    import vla.export.merge as export
    from vla.model.modeling import OpenVLA

    run_dir = tmp_path / "run"
    make_run(run_dir, isaac_root, LORA["lora"])
    real = export.load_trained

    def merged_without_adapter(run, cfg, merge):
        if not merge:
            return real(run, cfg, merge)
        plain = OpenVLA.from_pretrained(run / "base_model")
        plain.config.norm_stats = real(run, cfg, merge).config.norm_stats
        return plain

    monkeypatch.setattr(export, "load_trained", merged_without_adapter)
    with pytest.raises(export.ExportError, match="merged vs adapter model: action tokens differ"):
        export.export_run(export_config(run_dir, tmp_path / "out", onnx=False, int8=False))
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.parametrize("where", ["weights", "onnx", "onnx_check"])
def test_interrupted_export_leaves_nothing_at_out_dir(tmp_path, isaac_root, monkeypatch, where):
    """Everything is written and checked in a temporary sibling, then moved into place: killed anywhere
    before, out_dir holds nothing of the export (the old code had moved model/ and onnx/ into place
    before the ONNX checks). Hydra's own folder (with its log) keeps only what it held."""
    import huggingface_hub

    import vla.export.merge as export

    run_dir, out = tmp_path / "run", tmp_path / "out"
    make_run(run_dir, isaac_root, LORA["lora"])
    if where == "onnx_check":
        out.mkdir()
        (out / "export.log").write_text("hydra's log\n")
    with monkeypatch.context() as patch:
        if where == "weights":
            real = huggingface_hub.save_torch_state_dict

            def crash(state, folder, **kwargs):
                real(state, folder, **kwargs)  # the weights are written, then the process "dies"
                raise KeyboardInterrupt

            patch.setattr(huggingface_hub, "save_torch_state_dict", crash)
        elif where == "onnx":
            real = torch.onnx.export

            def crash(model, args, path, **kwargs):
                real(model, args, path, **kwargs)
                if Path(path).name == "decode.onnx":
                    raise KeyboardInterrupt

            patch.setattr(torch.onnx, "export", crash)
        else:  # the graphs are written, killed during their parity check

            def crash(*args, **kwargs):
                raise KeyboardInterrupt

            patch.setattr(export, "onnx_logit_diff", crash)
        with pytest.raises(KeyboardInterrupt):
            export.export_run(export_config(run_dir, out, int8=False))
    if where == "onnx_check":
        assert [p.name for p in out.iterdir()] == ["export.log"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", *(["out"] if out.exists() else [])])
    if where == "onnx_check":  # the same out_dir again: the finished export is moved in beside the log
        report = export.export_run(export_config(run_dir, out, int8=False))
        names = sorted(p.name for p in out.iterdir())
        assert names == ["export.json", "export.log", "heldout.npz", "model", "onnx"]
        assert report["model_dir"] == str(out / "model") and report["onnx"]["dir"] == str(out / "onnx")
        assert json.loads((out / "export.json").read_text())["onnx"]["dir"] == str(out / "onnx")


@pytest.mark.parametrize(("grounding", "parallel"), [(0, False), (3, False), (3, True), (0, True)])
def test_onnx_kv_cache_parity_on_random_model(tmp_path, grounding, parallel):
    """Prompts of different lengths in one batch, constrained and free decoding: the onnxruntime
    policy gives PyTorch's tokens (after `grounding` grounding tokens, which it returns as well), and
    its logits match an uncached PyTorch pass to 1e-4 (for a parallel-decoding model, one pass with
    placeholders at the action positions). A parallel-decoding model without grounding tokens is
    exported as one chunk graph (one pass per query), the others as prefix + decode graphs."""
    from vla.config import ActionLayout
    from vla.export.onnx import export_onnx
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.processing import build_prompt
    from vla.model.tiny import TinyArchitecture, build_tiny_model

    action = {k: [0.0] * 5 for k in ("mean", "std", "min", "max")}
    action.update(q01=[-1.0] * 5, q99=[1.0] * 5, mask=[True] * 5)
    model = build_tiny_model(TinyArchitecture(image_size=28), norm_stats={"d": {"action": action}}).eval()
    model.set_layout(ActionLayout(grounding=grounding, parallel_decoding=parallel, constrain_decoding=True))
    model.save_pretrained(tmp_path / "model")
    export_onnx(model, tmp_path / "onnx")
    graphs = json.loads((tmp_path / "onnx" / "policy.json").read_text())["graphs"]
    assert graphs == (["chunk.onnx"] if parallel and not grounding else ["prefix.onnx", "decode.onnx"])
    policy = OnnxPolicy(tmp_path / "model", tmp_path / "onnx", threads=1)
    assert policy.layout == model.layout  # read from the exported model folder's config.json
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["reach the red ball with the left hand", "turn", "lift the right knee"]
    for constrain in (True, False):
        expected = model.predict(images, texts, constrain=constrain)
        got = policy.predict(images, texts, constrain=constrain)
        np.testing.assert_array_equal(got.token_ids, expected.token_ids)
        np.testing.assert_allclose(got.actions, expected.actions)
        np.testing.assert_array_equal(got.grounding, expected.grounding)
        assert got.grounding.shape == (3, grounding) and got.input_ids == expected.input_ids
    inputs = model.processor(images[:1], [build_prompt(texts[0])])
    pred, logits = policy.predict_action(**inputs, return_logits=True)
    actions = pred.token_ids[0].reshape(-1).tolist()
    if parallel:
        actions = [model.action_placeholder_id] * len(actions)
    written = [*model.action_tokenizer.encode(pred.grounding[0]).tolist(), *actions]
    ids = torch.tensor([[*pred.input_ids[0], *written[:-1]]])
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -len(written) :].numpy()
    assert np.abs(ref - logits[0]).max() < 1e-4


def test_export_config_is_checked():
    with pytest.raises(ConfigError, match="samples_from='test' is not valid; choose one of"):
        ExportConfig(run="r", out_dir="o", samples_from="test")
    with pytest.raises(ConfigError, match="int8=true needs onnx=true"):
        ExportConfig(run="r", out_dir="o", onnx=False)
    with pytest.raises(ConfigError, match="actions_atol=0 must be > 0"):
        ExportConfig(run="r", out_dir="o", actions_atol=0)
    assert compose_config("export", ["run=some/run", "out_dir=x", "held_out=3"], ExportConfig).held_out == 3


def tiny_with_head(head: str, proprio: bool, grounding: int = 0, film: bool = False, positions: str = "dims"):
    """A tiny model at 28 px with chunks of 2 x 3 actions (test_l1_head's), its language model (and
    FiLM) moved so that every input matters, and two states [2, 4] in robot units (None without a state
    input)."""
    from test_film import perturb_film
    from test_l1_head import perturb, tiny

    states = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.2]]) if proprio else None
    model = perturb(tiny(head, proprio, grounding=grounding, film=film, positions=positions))
    return (perturb_film(model) if film else model), states


@pytest.mark.parametrize(
    ("head", "proprio", "grounding", "film", "positions"),
    [
        ("l1", False, 0, False, "dims"),
        ("l1", True, 0, True, "dims"),
        ("l1", True, 2, False, "dims"),
        ("l1", True, 2, True, "steps"),
        ("tokens", True, 0, True, "dims"),
    ],
)
def test_onnx_parity_for_every_head_and_the_state(tmp_path, head, proprio, grounding, film, positions):
    """The l1 head's chunk graph (with grounding values as a second output when the layout has them;
    D or, with chunk_positions=steps, one placeholder per chunk step) and the token head's graphs with
    a state input: the onnxruntime policy predicts PyTorch float32's
    chunk (normalized actions within 1e-5, tokens identical) from raw states, batch 1 and a batch of
    prompts of different lengths; int8 graphs run; a missing or mis-sized state fails as in PyTorch; a
    model without a state input has graphs without one."""
    import onnxruntime as ort
    from test_l1_head import IMAGES, TEXTS

    from vla.export.onnx import export_onnx, quantize_int8
    from vla.inference.onnx_policy import OnnxPolicy

    model, states = tiny_with_head(head, proprio, grounding, film, positions)
    model.save_pretrained(tmp_path / "model")
    export_onnx(model, tmp_path / "onnx")
    quantize_int8(tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "policy.json").read_text())
    graphs = ["chunk.onnx"]  # l1, and the token head with parallel decoding (test_l1_head.tiny's): one pass
    assert meta["graphs"] == graphs and meta["head"] == head and meta["chunk_size"] == 2
    assert (meta["action_dim"], meta["proprio_dim"]) == (3 if head == "l1" else 0, 4 if proprio else 0)
    if head == "l1":
        assert meta["placeholders"] == grounding + 2 * (1 if positions == "steps" else 3)
    inputs = [i.name for i in ort.InferenceSession(str(tmp_path / "onnx" / graphs[0])).get_inputs()]
    assert inputs == ["pixel_values", "input_ids", *(["proprio"] if proprio else [])]

    policy = OnnxPolicy(tmp_path / "model", tmp_path / "onnx", threads=1)
    for rows in ([0], [1], [0, 1]):  # batch 1, then two prompts of different lengths
        images, texts = [IMAGES[i] for i in rows], [TEXTS[i] for i in rows]
        batch_states = None if states is None else states[rows]
        expected = model.predict(images, texts, proprio=batch_states)
        got = policy.predict(images, texts, proprio=batch_states)
        assert got.actions.shape == expected.actions.shape == (len(rows), 2, 3)
        assert np.abs(got.normalized - expected.normalized).max() <= 1e-5
        if head == "l1":
            assert got.token_ids is None and got.grounding.shape == (len(rows), grounding)
            assert np.abs(got.grounding - expected.grounding).max(initial=0.0) <= 1e-5
        else:
            np.testing.assert_array_equal(got.token_ids, expected.token_ids)
        assert got.input_ids == expected.input_ids
    int8 = OnnxPolicy(tmp_path / "model", tmp_path / "onnx", "int8", threads=1).predict(
        IMAGES, TEXTS, proprio=states
    )
    assert int8.actions.shape == (2, 2, 3) and np.isfinite(int8.actions).all()
    assert (np.abs(int8.normalized) <= 1).all()
    if proprio:  # the same errors as the torch model
        for predictor in (model, policy):
            with pytest.raises(ValueError, match=r"reads a 4-value robot state"):
                predictor.predict(IMAGES, TEXTS)
            with pytest.raises(ValueError, match=r"shape \(2, 3\); this model reads \[batch=2, 4\]"):
                predictor.predict(IMAGES, TEXTS, proprio=np.zeros((2, 3)))
    else:
        with pytest.raises(ValueError, match="not trained with a robot state"):
            policy.predict(IMAGES, TEXTS, proprio=np.zeros((2, 4)))


def test_onnx_graphs_must_match_the_model_folder(tmp_path):
    """Graphs exported for another head are refused, naming both layouts."""
    from vla.export.onnx import export_onnx
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.configuration import CheckpointError

    l1, _ = tiny_with_head("l1", False)
    tokens, _ = tiny_with_head("tokens", False)
    l1.save_pretrained(tmp_path / "model")
    export_onnx(tokens, tmp_path / "onnx")
    with pytest.raises(
        CheckpointError, match=r"graphs exported for \{'head': 'tokens'.*export the model again"
    ):
        OnnxPolicy(tmp_path / "model", tmp_path / "onnx")
