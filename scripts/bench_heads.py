"""Chunk latency of every action head on one model, in PyTorch and onnxruntime, in one run.

The tiny architecture (or --llm-layers / --llm-dim for a larger one) with random weights (latency does
not depend on training), K-step chunks of D = 23 actions and, with --state, the 47-value robot state:

- tokens, autoregressive: OpenVLA's K*D action tokens decoded one at a time with the KV cache;
- tokens, parallel decoding: the K*D tokens from one pass over placeholders (OpenVLA-OFT);
- l1: OpenVLA-OFT's continuous head, one pass over K*D placeholders, no language-model head;
- l1, steps: the same head with `model.layout.chunk_positions=steps`, one placeholder per chunk step (K).

Each head's model is exported to ONNX (float32) in a temporary folder and queried through
`OnnxPolicy`, batch 1, as deployed. Prints p50 / p99 per chunk, actions/s and the speed-up over the
autoregressive token head on the same backend.

    python scripts/bench_heads.py [--chunk 5] [--queries 30] [--threads 1] [--state]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.config import ActionLayout, TinyArchitecture  # noqa: E402

ACTION_DIM, STATE_DIM = 23, 47
HEADS = {
    "tokens, autoregressive": ActionLayout(head="tokens"),
    "tokens, parallel": ActionLayout(head="tokens", parallel_decoding=True),
    "l1": ActionLayout(head="l1", action_dim=ACTION_DIM),
    "l1, steps": ActionLayout(head="l1", action_dim=ACTION_DIM, chunk_positions="steps"),
}


def statistics_23(state: bool) -> dict:
    def summary(n: int) -> dict:
        return {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n,
                "q01": [-1.0] * n, "q99": [1.0] * n}  # fmt: skip

    stats = {"action": {**summary(ACTION_DIM), "mask": [True] * ACTION_DIM}, "num_transitions": 1}
    if state:
        stats["proprio"] = summary(STATE_DIM)
    return {"athena": stats}


def time_queries(predict, n: int) -> list[float]:
    predict()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        predict()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunk", type=int, default=5, help="K: actions per query")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per head and backend")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--state", action="store_true", help="models read the 47-value robot state")
    parser.add_argument("--llm-layers", type=int, default=TinyArchitecture.llm_layers)
    parser.add_argument("--llm-dim", type=int, default=TinyArchitecture.llm_dim)
    args = parser.parse_args()
    if args.chunk < 1 or args.queries < 1 or args.threads < 1:
        parser.error("--chunk, --queries and --threads must be >= 1")

    from vla.export.onnx import export_onnx
    from vla.inference.onnx_policy import OnnxPolicy
    from vla.model.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    arch = TinyArchitecture(llm_layers=args.llm_layers, llm_dim=args.llm_dim)
    rng = np.random.default_rng(0)
    image = [rng.integers(0, 256, (arch.image_size, arch.image_size, 3), dtype=np.uint8)]
    text = ["reach the red ball with the left hand"]
    state = rng.uniform(-1, 1, (1, STATE_DIM)) if args.state else None
    print(
        f"tiny OpenVLA ({arch.llm_layers} LLM layers, width {arch.llm_dim}, {arch.image_size} px), chunks of "
        f"{args.chunk} x {ACTION_DIM} actions, state {'47 values' if args.state else 'none'}, batch 1, "
        f"{args.threads} thread(s), {args.queries} queries each"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in HEADS.items():
            model = build_tiny_model(arch, norm_stats=statistics_23(args.state)).eval()
            model.set_layout(
                ActionLayout(
                    head=layout.head,
                    chunk_size=args.chunk,
                    parallel_decoding=layout.parallel_decoding,
                    constrain_decoding=True,
                    action_dim=layout.action_dim,
                    proprio_dim=STATE_DIM if args.state else 0,
                    chunk_positions=layout.chunk_positions,
                )
            )
            folder = Path(tmp) / name.replace(", ", "_")
            model.save_pretrained(folder / "model")
            export_onnx(model, folder / "onnx")
            policy = OnnxPolicy(folder / "model", folder / "onnx", threads=args.threads)
            for backend, predictor in (("torch", model), ("onnxruntime", policy)):
                with torch.no_grad():
                    times = time_queries(
                        lambda p=predictor: p.predict(image, text, proprio=state), args.queries
                    )
                rows.append((name, backend, statistics.median(times), float(np.percentile(times, 99))))
    baseline = {backend: p50 for name, backend, p50, _ in rows if name == "tokens, autoregressive"}
    print("\n| head | backend | chunk p50 ms | chunk p99 ms | actions/s | speed-up vs autoregressive |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, backend, p50, p99 in rows:
        print(
            f"| {name} | {backend} | {1000 * p50:.1f} | {1000 * p99:.1f} | "
            f"{args.chunk / p50:,.0f} | {baseline[backend] / p50:.1f}x |"
        )


if __name__ == "__main__":
    main()
