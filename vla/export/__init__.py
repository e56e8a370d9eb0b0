"""After training: merge a run's adapters with parity checks, ONNX graphs (KV cache), int8, TensorRT, and
the runtime benchmark."""
