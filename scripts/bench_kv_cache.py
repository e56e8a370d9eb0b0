"""Per-query latency of the tiny model with and without the KV cache, and with parallel decoding
(model.parallel_decoding: the chunk's K*23 action tokens in one pass), for 23-dim actions in K-step chunks.

python scripts/bench_kv_cache.py [--actions 20] [--batch 1] [--chunk 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.config import ActionLayout  # noqa: E402
from vla.model.tiny import TinyArchitecture, build_tiny_model  # noqa: E402


def stats_23() -> dict:
    action = {"q01": [-1.0] * 23, "q99": [1.0] * 23, "mask": [True] * 23}
    action.update({k: [0.0] * 23 for k in ("mean", "std", "min", "max")})
    return {"athena": {"action": action, "num_transitions": 1, "num_trajectories": 1}}


def time_actions(model, images, instructions, use_cache: bool, n: int) -> list[float]:
    inputs = model.processor(
        images, [f"In: What action should the robot take to {t}?\nOut:" for t in instructions]
    )
    model.predict_action(**inputs, use_cache=use_cache)  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        model.predict_action(**inputs, use_cache=use_cache)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actions", type=int, default=20, help="timed predictions per mode")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=TinyArchitecture.image_size)
    parser.add_argument("--chunk", type=int, default=1, help="actions per query (model.layout.chunk_size)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_tiny_model(TinyArchitecture(image_size=args.image_size), norm_stats=stats_23()).eval()
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8) for _ in range(args.batch)
    ]
    instructions = ["reach the red ball with the left hand"] * args.batch
    print(
        f"tiny model, image {args.image_size}px, batch {args.batch}, {args.chunk} x 23 action tokens per query, "
        f"torch threads {torch.get_num_threads()}"
    )
    results = {}
    modes = {
        "with KV cache              ": (True, False),
        "without KV cache           ": (False, False),
        "KV cache, parallel decoding": (True, True),
    }
    for label, (use_cache, parallel) in modes.items():
        model.set_layout(ActionLayout(chunk_size=args.chunk, parallel_decoding=parallel))
        t = time_actions(model, images, instructions, use_cache, args.actions)
        results[label] = statistics.median(t)
        print(
            f"{label}: median {1000 * results[label]:.1f} ms per query, p90 {1000 * np.percentile(t, 90):.1f} ms"
        )
    cached, uncached, parallel = results.values()
    print(
        f"speed-up from the KV cache: {uncached / cached:.2f}x; from parallel decoding on top: {cached / parallel:.2f}x"
    )


if __name__ == "__main__":
    main()
