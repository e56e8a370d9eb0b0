"""One way to load and run a trained policy, whatever its folder and runtime.

    from vla.inference import load_policy
    policy = load_policy("outputs/train/<date>/<time>")      # a run, an export or an OpenVLA folder
    chunk = policy.act(image, "reach the red ball with the left hand")   # [K, D] robot units

`load_policy(path, backend=...)` takes an export folder (`scripts/export.py`: model/ + onnx/), a
training run folder (config.yaml + adapter/ or model/; adapters merged on load), or an OpenVLA-format
folder / hub id, and one of BACKENDS: `torch` (any folder), `onnx`, `onnx_int8` and `tensorrt`
(export folders, whose onnx/ holds the graphs). predict, evaluate, benchmark and the in-training
simulator checks all run their policy through `Policy`.
"""

from __future__ import annotations

from pathlib import Path

from vla.model.configuration import CheckpointError
from vla.model.policy import Policy, policy_info

BACKENDS = ("torch", "onnx", "onnx_int8", "tensorrt")


def folder_kind(path: str | Path) -> str:
    """export | run | openvla (an OpenVLA-format folder, or a hub id). A folder that an export or a
    export left unfinished (killed, out of space) is refused here, naming what is missing: an export
    is complete only with export.json (written last, after every check). `load_policy` refuses a run
    without its adapter/ or model/ (written when training ends)."""
    path = Path(path)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return "run"  # a full fine-tune's run folder holds model/ too
    exported = [name for name in ("model", "onnx", "heldout.npz") if (path / name).exists()]
    if exported and not (path / "export.json").is_file():
        raise CheckpointError(
            f"{path}: an export that did not finish (it has {', '.join(exported)} but no export.json, "
            "which is written last, once every check passed); export the run again (make export)"
        )
    if (path / "model" / "config.json").is_file() and (path / "export.json").is_file():
        return "export"
    return "openvla"


def training_scene(path: str | Path) -> dict | None:
    """The `data.sample` settings (camera, image_size, control_hz, ...) a policy was trained on when it
    was trained on simulator data: from a run folder's config.yaml or an export's export.json; None
    otherwise (other data, or an OpenVLA folder)."""
    import json

    path = Path(path)
    kind = folder_kind(path)
    if kind == "run":
        from vla.training.runs import load_train_config

        return load_train_config(path).data.sim_scene()
    if kind == "export":
        try:
            return json.loads((path / "export.json").read_text()).get("sim_scene")
        except (OSError, ValueError):
            return None
    return None


def load_policy(
    path: str | Path,
    backend: str = "torch",
    *,
    unnorm_key: str | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    threads: int = 0,
) -> Policy:
    """The policy in `path` (export folder, training run folder, OpenVLA-format folder or hub id) on
    `backend`. `dtype` / `quantization` (nf4 | int8) apply to the torch backend; `threads` to onnxruntime."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {list(BACKENDS)}")
    source = str(path)
    kind = folder_kind(path)
    path = Path(path)
    if kind == "run":  # its config once: for the scene and for loading
        from vla.training.runs import load_train_config, load_trained

        if not ((path / "adapter").is_dir() or (path / "model").is_dir()):
            raise CheckpointError(
                f"{path}: a training run that did not finish (no adapter/ or model/, saved when training "
                f"ends); resume it with `python train.py ckpt_path={path}` or pass another checkpoint="
            )

        train_cfg = load_train_config(path)
        scene = train_cfg.data.sim_scene()
    else:
        scene = training_scene(path)
    hz = float(scene["control_hz"]) if scene else None
    if backend == "torch":
        if kind == "run":
            if dtype or quantization:
                raise ValueError(
                    "dtype= and quantization= apply to export and OpenVLA folders, not to run folders"
                )
            model = load_trained(path, train_cfg, merge=True)
        else:
            from vla.model.modeling import OpenVLA

            folder = path / "model" if kind == "export" else source
            model = OpenVLA.from_pretrained(folder, dtype=dtype, quantization=quantization)
        return Policy(model, policy_info(model, source, backend, kind, unnorm_key, hz))
    if kind != "export":
        raise CheckpointError(
            f"{source}: backend={backend} needs an export folder (model/ + onnx/, from scripts/export.py); "
            f"this is a {'training run' if kind == 'run' else 'model'} folder: export it first (make export)"
        )
    from vla.inference.onnx_policy import OnnxPolicy

    onnx_dir = path / "onnx"
    if not (onnx_dir / "policy.json").is_file():
        raise CheckpointError(f"{onnx_dir}: no ONNX graphs (export with onnx=true)")
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    if backend == "tensorrt":
        providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    precision = "int8" if backend == "onnx_int8" else "fp32"
    model = OnnxPolicy(path / "model", onnx_dir, precision, threads, providers)
    return Policy(model, policy_info(model, source, backend, kind, unnorm_key, hz))
