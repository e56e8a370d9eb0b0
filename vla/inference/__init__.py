"""Running a trained policy: `load_policy(path, backend=...)` -> `Policy` (torch, onnx, onnx_int8,
tensorrt), and the onnxruntime policy behind the ONNX backends."""

from vla.inference.policy import BACKENDS, load_policy
from vla.model.policy import Policy, PolicyInfo

__all__ = ["BACKENDS", "Policy", "PolicyInfo", "load_policy"]
