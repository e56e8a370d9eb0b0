"""A labelled PROJECTION, not a measurement: the per-chunk latency of openvla-7b on a Jetson Orin NX 16GB
for each way of producing actions, from the FLOPs and bytes each forward pass needs (a roofline).

Each pass takes max(FLOPs / (peak * utilisation), bytes / (bandwidth * efficiency)); a chunk is the sum
of its passes:
- tokens, autoregressive (OpenVLA): one prefix pass over image patches (+ state token) + prompt, then one
  decode step per further token (G + K*D tokens in all), each step reading every LLM weight and the
  KV cache so far.
- tokens, parallel decoding (OpenVLA-OFT): the prefix pass, the G grounding tokens one at a time, then
  one pass over the K*D - 1 placeholder positions (logits at all of them), as `TokenHead.generate` does.
- l1 (OpenVLA-OFT): one pass over the prefix and the K*D placeholder positions, no language-model head,
  then the action MLP on K positions (its input a step's D hidden states, concatenated).
- l1_steps (`model.layout.chunk_positions=steps`, this project's default): the same pass over the prefix
  and K placeholder positions, one per chunk step; the action MLP reads one hidden state per step.
Weights are read once per pass; activations are left out of the bytes (they are small next to 7B weights
at batch 1), the KV cache is counted (fp16). Weight-only quantization is assumed (int8/int4 weights
dequantized to fp16 tensor-core math), so every precision computes at the fp16 rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# -- openvla-7b, from ../shared/openvla_ref/openvla7b_param_manifest.json (7,541,237,184 parameters) ----
LLM_HIDDEN, LLM_LAYERS, LLM_INTERMEDIATE, VOCAB = 4096, 32, 11008, 32064
LLM_LINEAR_PARAMS = LLM_LAYERS * (4 * LLM_HIDDEN**2 + 3 * LLM_HIDDEN * LLM_INTERMEDIATE)  # 6,476,005,376
LM_HEAD_PARAMS = VOCAB * LLM_HIDDEN  # 131,334,144 (the embedding table is as large; only rows are read)
DINO_PARAMS, SIGLIP_PARAMS = 303_230_976, 427_680_704  # vision_backbone.featurizer / fused_featurizer
PROJECTOR_PARAMS = 18_948_608 + 35_655_680 + 16_781_312  # projector.fc1 + fc2 + fc3
TOTAL_PARAMS = 7_541_237_184
PATCHES = 256  # 224 px / 14 px patches, squared; both towers
# (layers, width, tokens) of the towers' attention: DINOv2-L/14 with 1 cls + 4 register tokens, SigLIP
# so400m/14 (OpenVLA reads the second-to-last block's output; counting every block errs on the slow side).
TOWERS = ((24, 1024, PATCHES + 5), (27, 1152, PATCHES))
PROMPT_TOKENS = 20  # "<s>In: What action should the robot take to {instruction}?\nOut:▁", a short instruction
KV_BYTES = 2  # fp16 cache


@dataclass(frozen=True)
class Device:
    name: str
    fp16_tflops: float  # dense fp16 tensor-core peak
    bandwidth_gb_s: float  # peak DRAM bandwidth
    memory_gb: float  # shared by CPU and GPU
    source: str


# The "Jetson Orin 16 GB" is the Orin NX 16GB module (AGX Orin comes with 32 or 64 GB).
# NVIDIA Jetson Orin NX Series datasheet (DS-10712-001, "Orin NX 16GB"): 1024-core Ampere GPU with 32
# Tensor Cores at up to 918 MHz, 16 GB 128-bit LPDDR5 at 102.4 GB/s, "up to 100 TOPS" (sparse INT8, GPU
# + 2 NVDLA v2). Dense fp16 tensor peak, derived: 32 Tensor Cores x 256 fp16 FMA/clock x 2 FLOP x
# 0.918 GHz = 15.0 TFLOPS (the same per-core rate gives the AGX Orin 64GB technical brief's 85 sparse
# fp16 TFLOPS from 64 cores at 1.3 GHz). JetPack 6.2's "Super" modes raise the clocks: not assumed.
ORIN_NX_16GB = Device(
    name="Jetson Orin NX 16GB (MAXN, not Super)",
    fp16_tflops=15.0,
    bandwidth_gb_s=102.4,
    memory_gb=16.0,
    source="NVIDIA Jetson Orin NX Series datasheet DS-10712-001; fp16 peak derived from its GPU figures",
)
# Assumptions, not datasheet figures: the share of the peaks a tuned runtime (TensorRT-LLM, MLC) reaches
# at batch 1, and the memory the OS, CUDA context and runtime keep.
COMPUTE_UTILISATION = 0.5
BANDWIDTH_EFFICIENCY = 0.7
RESERVED_GB = 2.5
# Bytes per weight: int8 per-channel scales and int4 group-128 fp16 scale + zero add little.
WEIGHT_BYTES = {"fp16": 2.0, "int8": 1.0, "int4": 0.53}
HEADS = ("tokens_autoregressive", "tokens_parallel", "l1", "l1_steps")
CONTINUOUS = ("l1", "l1_steps")


@dataclass
class Pass:
    """One forward pass of the language model over `new` positions after `cached` ones."""

    new: int
    cached: int = 0
    logits: int = 1  # positions the language-model head runs on
    image: bool = False  # the towers, the projector (and the state projector) run in this pass
    action_mlp: int = 0  # positions the l1 head's MLP runs on (K)
    mlp_inputs: int = 0  # hidden states the MLP reads per position (D for l1, 1 for l1_steps)


def action_mlp_params(action_dim: int, inputs: int | None = None) -> int:
    """`vla.model.projectors.ActionMLP` at the 7B width: LayerNorm + Linear(P*H -> H), 2 residual blocks,
    LayerNorm + Linear(H -> D); P = `inputs` hidden states per chunk step (default D, OpenVLA-OFT)."""
    h, d = LLM_HIDDEN, action_dim
    p = d if inputs is None else inputs
    return 2 * p * h + p * h * h + h + 2 * (2 * h + h * h + h) + 2 * h + h * d + d


def proprio_params(state_dim: int) -> int:
    """`ProprioProjector`: Linear(S -> H), GELU, Linear(H -> H)."""
    return state_dim * LLM_HIDDEN + LLM_HIDDEN + LLM_HIDDEN**2 + LLM_HIDDEN if state_dim else 0


def pass_cost(p: Pass, weight_bytes: float, action_dim: int, state_dim: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one pass."""
    n, c = p.new, p.cached
    # Causal attention: the n new queries see the c cached positions and, on average, half the new ones.
    attention = 4 * LLM_LAYERS * LLM_HIDDEN * n * (c + (n + 1) / 2)
    flops = 2 * LLM_LINEAR_PARAMS * n + attention + 2 * LM_HEAD_PARAMS * p.logits
    params = LLM_LINEAR_PARAMS + (LM_HEAD_PARAMS if p.logits else 0)
    if p.image:
        flops += 2 * (DINO_PARAMS * TOWERS[0][2] + SIGLIP_PARAMS * TOWERS[1][2] + PROJECTOR_PARAMS * PATCHES)
        flops += sum(4 * layers * width * tokens**2 for layers, width, tokens in TOWERS)
        flops += 2 * proprio_params(state_dim)
        params += DINO_PARAMS + SIGLIP_PARAMS + PROJECTOR_PARAMS + proprio_params(state_dim)
    if p.action_mlp:
        flops += 2 * action_mlp_params(action_dim, p.mlp_inputs) * p.action_mlp
        params += action_mlp_params(action_dim, p.mlp_inputs)
    cache = 2 * LLM_LAYERS * LLM_HIDDEN * (c + n) * KV_BYTES  # read c, write n
    return flops, params * weight_bytes + cache


def chunk_passes(head: str, chunk_size: int, action_dim: int, grounding: int, prefix: int) -> list[Pass]:
    """The passes one query (one chunk) takes with `head`."""
    n_actions = chunk_size * action_dim
    if head == "l1":
        return [Pass(prefix + n_actions, logits=0, image=True, action_mlp=chunk_size, mlp_inputs=action_dim)]
    if head == "l1_steps":
        return [Pass(prefix + chunk_size, logits=0, image=True, action_mlp=chunk_size, mlp_inputs=1)]
    passes = [Pass(prefix, image=True)]
    serial = grounding + n_actions - 1 if head == "tokens_autoregressive" else grounding
    passes += [Pass(1, prefix + j) for j in range(serial)]
    if head == "tokens_parallel" and n_actions > 1:
        passes.append(Pass(n_actions - 1, prefix + grounding, logits=n_actions - 1))
    return passes


def project_chunk(
    head: str,
    weights: str,
    chunk_size: int,
    action_dim: int,
    grounding: int = 0,
    state_dim: int = 0,
    device: Device = ORIN_NX_16GB,
) -> dict[str, Any]:
    """The projected cost of one chunk of openvla-7b with `head` and `weights` (fp16 | int8 | int4)."""
    prefix = PROMPT_TOKENS + PATCHES + (1 if state_dim else 0)
    passes = chunk_passes(head, chunk_size, action_dim, 0 if head in CONTINUOUS else grounding, prefix)
    flops = bytes_ = seconds = compute_s = 0.0
    for p in passes:
        f, b = pass_cost(p, WEIGHT_BYTES[weights], action_dim, state_dim)
        t_compute = f / (device.fp16_tflops * 1e12 * COMPUTE_UTILISATION)
        t_memory = b / (device.bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY)
        flops, bytes_, seconds = flops + f, bytes_ + b, seconds + max(t_compute, t_memory)
        compute_s += t_compute if t_compute >= t_memory else 0.0
    extra = sum(action_mlp_params(action_dim, p.mlp_inputs) for p in passes if p.action_mlp)
    positions = max(p.new + p.cached for p in passes)
    footprint = (TOTAL_PARAMS + extra + proprio_params(state_dim)) * WEIGHT_BYTES[weights]
    footprint += 2 * LLM_LAYERS * LLM_HIDDEN * positions * KV_BYTES
    tokens = None if head in CONTINUOUS else grounding + chunk_size * action_dim
    return {
        "head": head,
        "weights": weights,
        "passes": len(passes),
        "gflops": flops / 1e9,
        "gbytes": bytes_ / 1e9,
        "chunk_ms": 1000 * seconds,
        "compute_bound_share": compute_s / seconds,
        "actions_per_s": chunk_size / seconds,
        "tokens_per_s": None if tokens is None else tokens / seconds,
        "memory_gb": footprint / 1e9,
        "fits": footprint / 1e9 <= device.memory_gb - RESERVED_GB,
    }


def projection(chunk_size: int, action_dim: int, grounding: int = 0, state_dim: int = 0) -> dict[str, Any]:
    """Every head at every weight precision for a chunk of K x D actions (G grounding tokens for the
    token heads, S state values), with the device figures and assumptions it rests on."""
    return {
        "what": "PROJECTION (an estimate from FLOPs and bytes per pass, not a measurement): openvla-7b "
        f"geometry on {ORIN_NX_16GB.name}",
        "device": asdict(ORIN_NX_16GB),
        "assumptions": {
            "compute_utilisation": COMPUTE_UTILISATION,
            "bandwidth_efficiency": BANDWIDTH_EFFICIENCY,
            "reserved_gb": RESERVED_GB,
            "prompt_tokens": PROMPT_TOKENS,
            "image_patches": PATCHES,
            "weight_bytes": WEIGHT_BYTES,
            "kv_cache": "fp16",
            "math": "fp16 tensor cores (weight-only quantization)",
        },
        "chunk": {
            "chunk_size": chunk_size,
            "action_dim": action_dim,
            "grounding": grounding,
            "state_dim": state_dim,
        },
        "rows": [
            project_chunk(head, weights, chunk_size, action_dim, grounding, state_dim)
            for head in HEADS
            for weights in WEIGHT_BYTES
        ],
    }


def projection_table(proj: dict[str, Any]) -> str:
    """The projection as a markdown table, under a heading that says it is an estimate."""
    chunk = proj["chunk"]
    lines = [
        f"**{proj['what']}**; chunk K={chunk['chunk_size']} x D={chunk['action_dim']}"
        f"{', G=' + str(chunk['grounding']) if chunk['grounding'] else ''}"
        f"{', state S=' + str(chunk['state_dim']) if chunk['state_dim'] else ''}; compute utilisation "
        f"{proj['assumptions']['compute_utilisation']:g}, bandwidth efficiency "
        f"{proj['assumptions']['bandwidth_efficiency']:g} (assumed).",
        "",
        "| head | weights | passes | GFLOP | GB moved | chunk ms | actions/s (= control Hz) | tokens/s | memory GB | fits 16 GB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in proj["rows"]:
        tokens = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        lines.append(
            f"| {r['head']} | {r['weights']} | {r['passes']} | {r['gflops']:,.0f} | {r['gbytes']:.1f} "
            f"| {r['chunk_ms']:,.0f} | {r['actions_per_s']:.2f} | {tokens} | {r['memory_gb']:.1f} "
            f"| {'yes' if r['fits'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
