"""One inference API: `load_policy` gives the same actions from a training run, its export, the export's
OpenVLA folder and the export's ONNX graphs, says what the policy expects, and refuses what cannot work
in one line."""

from __future__ import annotations

import numpy as np
import pytest
from data_factories import ACTION_DIM, make_isaac_dataset
from test_export import LORA, export_config, make_run

from tests.conftest import load_script
from vla.config import PredictConfig, QuantizationConfig
from vla.model.configuration import CheckpointError

CHUNK = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A chunked LoRA run (random adapter weights, so the merge matters) and its export."""
    from vla.export.merge import HeldOut, export_run

    root = tmp_path_factory.mktemp("inference")
    make_isaac_dataset(root / "data", n_episodes=4, steps=6)
    run_dir = root / "run"
    make_run(run_dir, root / "data", [*LORA["lora"], f"model.layout.chunk_size={CHUNK}"])
    export_run(export_config(run_dir, root / "export", int8=False, tensorrt=False))
    return run_dir, root / "export", HeldOut.load(root / "export" / "heldout.npz")


def tokens(policy, samples) -> np.ndarray:
    return np.stack(
        [
            policy.predict([img], [text]).token_ids[0]
            for img, text in zip(samples.images, samples.instructions)
        ]
    )


def test_every_folder_and_backend_gives_the_same_actions(trained):
    from vla.inference import load_policy

    run_dir, export_dir, samples = trained
    policies = {
        "run": load_policy(run_dir),
        "export": load_policy(export_dir),
        "model folder": load_policy(export_dir / "model"),
        "onnx": load_policy(export_dir, "onnx"),
    }
    expected = tokens(policies["run"], samples)
    assert expected.shape == (len(samples.images), CHUNK, ACTION_DIM)
    for name, policy in policies.items():
        np.testing.assert_array_equal(tokens(policy, samples), expected, err_msg=name)
    kinds = {name: policy.info.kind for name, policy in policies.items()}
    assert kinds == {"run": "run", "export": "export", "model folder": "openvla", "onnx": "export"}
    for policy in policies.values():
        info = policy.info
        assert (info.action_dim, info.chunk_size, info.grounding, info.image_size) == (
            ACTION_DIM,
            CHUNK,
            0,
            56,
        )
        assert info.dataset_key == "athena_isaac" and info.control_hz is None  # not simulator data


def test_act_returns_one_observations_chunk_in_robot_units(trained):
    from vla.inference import load_policy

    run_dir, _, samples = trained
    policy = load_policy(run_dir)
    chunk = policy.act(samples.images[0], samples.instructions[0])
    batch = policy.predict([samples.images[0]], [samples.instructions[0]]).actions
    assert chunk.shape == (CHUNK, ACTION_DIM)
    np.testing.assert_array_equal(chunk, batch[0])
    with pytest.raises(ValueError, match="not trained with a robot state"):
        policy.act(samples.images[0], samples.instructions[0], state=np.zeros(ACTION_DIM))
    with pytest.raises(ValueError, match="2 images for 1 instructions"):
        policy.predict(samples.images[:2], samples.instructions[:1])


def test_what_cannot_work_is_refused_naming_the_way_out(trained, tmp_path):
    from vla.inference import load_policy

    run_dir, export_dir, _ = trained
    with pytest.raises(CheckpointError, match="needs an export folder.*training run folder: export it first"):
        load_policy(run_dir, "onnx")
    with pytest.raises(ValueError, match="backend='onnx_fp16'"):
        load_policy(export_dir, "onnx_fp16")
    with pytest.raises(ValueError, match="apply to export and OpenVLA folders"):
        load_policy(run_dir, dtype="bfloat16")


def test_predict_script_takes_a_run_folder_and_an_export(trained, tmp_path):
    from PIL import Image

    run_dir, export_dir, samples = trained
    image = tmp_path / "frame.png"
    Image.fromarray(samples.images[0]).save(image)
    script = load_script("predict")
    results = [
        script.run(
            PredictConfig(
                checkpoint=str(folder),
                image=str(image),
                instruction=samples.instructions[0],
                backend=backend,
                quantization=QuantizationConfig(),
            )
        )
        for folder, backend in ((run_dir, "torch"), (export_dir, "onnx"))
    ]
    assert results[0]["action_token_ids"] == results[1]["action_token_ids"]
    assert np.asarray(results[0]["action"]).shape == (CHUNK, ACTION_DIM)


@pytest.fixture(scope="module", params=["l1", "tokens"])
def with_state(request, tmp_path_factory):
    """A chunked LoRA run whose model reads the robot state (47 values), with the l1 head or the token
    head (random adapter weights and trained-module copies, so the merge matters), and its export."""
    from vla.export.merge import HeldOut, export_run

    root = tmp_path_factory.mktemp(f"state_{request.param}")
    make_isaac_dataset(root / "data", n_episodes=4, steps=6)
    run_dir = root / "run"
    head = [f"model.action_head={request.param}", "model.proprio=true", f"model.layout.chunk_size={CHUNK}"]
    make_run(run_dir, root / "data", [*LORA["lora"], *head])
    export_run(export_config(run_dir, root / "export", int8=False, tensorrt=False))
    return request.param, run_dir, root / "export", HeldOut.load(root / "export" / "heldout.npz")


def chunks(policy, samples) -> np.ndarray:
    """[N, K, D] normalized actions, one held-out sample (and its state) per call."""
    return np.concatenate(
        [
            policy.predict([img], [text], samples.state(i)).normalized
            for i, (img, text) in enumerate(zip(samples.images, samples.instructions))
        ]
    )


def test_policies_with_a_state_give_the_same_chunks_everywhere(with_state):
    """Run, export, model folder and ONNX graphs: the same chunks from the same frames and states (l1:
    within 1e-5; tokens: identical), `info` says the state size, and a missing state is refused."""
    from vla.inference import load_policy
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.policy import Policy, policy_info

    head, run_dir, export_dir, samples = with_state
    assert samples.states.shape == (len(samples.images), 47)
    policies = {
        "run": load_policy(run_dir),
        "export": load_policy(export_dir),
        "model folder": load_policy(export_dir / "model"),
    }
    onnx = OnnxPolicy(export_dir / "model", export_dir / "onnx")
    policies["onnx"] = Policy(onnx, policy_info(onnx, str(export_dir), "onnx", "export"))
    if head == "tokens":  # (an l1 export through load_policy: test_load_policy_runs_an_l1_export_on_onnx)
        policies["onnx via load_policy"] = load_policy(export_dir, "onnx")
    expected = chunks(policies["run"], samples)
    assert expected.shape == (len(samples.images), CHUNK, ACTION_DIM)
    for name, policy in policies.items():
        assert policy.info.state_dim == 47 and policy.info.chunk_size == CHUNK, name
        got = chunks(policy, samples)
        if head == "l1":
            assert np.abs(got - expected).max() <= 1e-5, name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        with pytest.raises(ValueError, match=r"reads the robot state: pass state \[B, 47\]"):
            policy.predict(samples.images[:1], samples.instructions[:1])
    chunk = policies["onnx"].act(samples.images[0], samples.instructions[0], samples.states[0])
    assert chunk.shape == (CHUNK, ACTION_DIM)


def test_load_policy_runs_an_l1_export_on_onnx(with_state):
    from vla.inference import load_policy

    head, run_dir, export_dir, samples = with_state
    if head != "l1":
        pytest.skip(
            "token exports load on onnx already (test_policies_with_a_state_give_the_same_chunks_everywhere)"
        )
    expected = chunks(load_policy(run_dir), samples)
    assert np.abs(chunks(load_policy(export_dir, "onnx"), samples) - expected).max() <= 1e-5
