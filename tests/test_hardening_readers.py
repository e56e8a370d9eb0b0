"""Issue 21, readers: a folder an export or a training run left unfinished is refused with a message
naming what is missing; an export never writes over another; predict checks its instruction and its
image before anything is loaded. Each failed (or ran on) before the issue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose_config, load_script
from vla.config import ExportConfig, PredictConfig, QuantizationConfig
from vla.data.episodes import DataError
from vla.inference import load_policy
from vla.model.configuration import CheckpointError


def test_export_without_its_completion_record_is_refused(tmp_path):
    """Killed after onnx/ was moved into place but before the checks wrote export.json."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "policy.json").write_text("{}")
    for backend in ("torch", "onnx"):
        with pytest.raises(CheckpointError, match=r"did not finish .*model, onnx but no export\.json"):
            load_policy(tmp_path, backend)


def test_benchmark_refuses_an_unfinished_export(tmp_path):
    from vla.config import BenchmarkConfig

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "onnx").mkdir()
    cfg = compose_config("benchmark", [f"checkpoint={tmp_path}"], BenchmarkConfig)
    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_script("benchmark").run(cfg)


def test_training_run_without_weights_is_refused_with_the_way_to_resume(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match=rf"did not finish.*ckpt_path={tmp_path}"):
        load_policy(tmp_path)


def test_a_full_fine_tune_run_folder_is_a_run_not_an_unfinished_export(tmp_path):
    """A finished `lora=full` run saves its weights as model/ (beside config.yaml), as an export does:
    it is read as a run (its config.yaml), never refused as an export without export.json."""
    from vla.inference.policy import folder_kind

    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert folder_kind(tmp_path) == "run"


def test_export_refuses_an_out_dir_that_holds_an_export(tmp_path):
    from vla.export.merge import ExportError, export_run

    out = tmp_path / "out"
    out.mkdir()
    (out / "export.json").write_text(json.dumps({"run": "theirs"}))
    cfg = compose_config("export", [f"run={tmp_path / 'run'}", f"out_dir={out}"], ExportConfig)
    with pytest.raises(ExportError, match=rf"out_dir={out}: already holds export\.json"):
        export_run(cfg)
    assert json.loads((out / "export.json").read_text()) == {"run": "theirs"}


def predict(tmp_path, instruction: str, image) -> dict:
    path = tmp_path / "frame.png"
    image.save(path)
    cfg = PredictConfig(
        checkpoint=str(tmp_path / "no_model_needed"),
        image=str(path),
        instruction=instruction,
        quantization=QuantizationConfig(),
    )
    return load_script("predict").run(cfg)


def test_predict_refuses_an_overlong_instruction_before_loading(tmp_path):
    """100,000 characters were accepted (and tokenized into 25,000 positions of a 2,048-position model)."""
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"instruction=: the instruction has 100,000 characters"):
        predict(tmp_path, "a" * 100_000, image)


def test_predict_refuses_a_decompression_bomb_image(tmp_path):
    with pytest.raises(DataError, match=r"image=.*13000 x 13000 pixels"):
        predict(tmp_path, "reach the red ball", Image.new("1", (13_000, 13_000)))


def test_prompt_token_limit_names_the_positions():
    from vla.data.limits import check_prompt_tokens

    check_prompt_tokens(2048, 2048, "instruction=")
    with pytest.raises(DataError, match="need 2049 positions; the language model has 2048"):
        check_prompt_tokens(2049, 2048, "instruction=")


def test_make_sample_data_never_writes_over_a_users_demos(tmp_path):
    """output_dir=<folder with the user's demos.pkl> write_pickle=true replaced that demos.pkl."""
    from vla.config import MakeSampleDataConfig

    (tmp_path / "demos.pkl").write_bytes(b"the user's own demos")
    overrides = [f"output_dir={tmp_path}", "write_pickle=true", "data.sample.episodes_per_task=1"]
    cfg = compose_config("make_sample_data", overrides, MakeSampleDataConfig)
    with pytest.raises(
        FileExistsError, match=rf"output_dir={tmp_path}: not an empty folder \(holds demos\.pkl"
    ):
        load_script("make_sample_data").run(cfg)
    assert (tmp_path / "demos.pkl").read_bytes() == b"the user's own demos"
