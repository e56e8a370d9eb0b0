"""Probe: can the tiny OpenVLA find a small coloured disc, and the one its instruction names?

Synthetic scenes stand in for athena's reach_ball: grey images with three discs (red, green, blue, the
simulator's ball colours) at random places that never overlap, and the prompt "reach the <colour> ball".
The tiny model (the default's architecture, trained from scratch as `make train` does) regresses the
named disc's image position (x, y) in [-1, 1] through the continuous head's MLP at two placeholder
positions, with the squared error. `--one-frac F` draws only the named disc in a share F of the
training scenes (F=1: localisation without binding; held-out scenes have all three discs unless F=1).

Printed every `--every` steps on 200 held-out scenes: the mean error in pixels and the share of
scenes whose prediction lies nearest the named disc (1/3 by chance with three discs). A model that
learns nothing predicts the mean position: about 0.38 x size pixels away.

    PYTHONPATH=. python docs/experiments/binding_probe.py --size 112 --radius-div 14 --film

Results and what they mean: docs/experiments/athena_suite.md ("Why reach_ball stays low").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from vla.config.model import ActionLayout, TinyArchitecture
from vla.model.processing import build_prompt
from vla.model.tiny import build_tiny_model
from vla.sim.athena import BALL_COLORS

COLOURS = list(BALL_COLORS)


def scene(
    rng: np.random.Generator, size: int, radius: float, one: bool
) -> tuple[Image.Image, int, np.ndarray]:
    """An image, the named disc's index and the [3, 2] disc centres in [-1, 1]."""
    margin = radius + 1
    while True:
        centres = rng.uniform(margin, size - margin, size=(3, 2))
        gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)]
        if min(gaps) > 2.5 * radius:
            break
    named = int(rng.integers(3))
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i, (x, y) in enumerate(centres):
        if one and i != named:
            continue
        rgb = tuple(int(255 * c) for c in BALL_COLORS[COLOURS[i]])
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=rgb)
    return image, named, centres / size * 2 - 1


def encode(model, rng: np.random.Generator, n: int, size: int, radius: float, one_frac: float) -> dict:
    """n scenes as model inputs: pixel values, prompt ids ending with '▁' and two placeholders."""
    processor = model.processor
    images, ids, targets, centres, named = [], [], [], [], []
    for _ in range(n):
        image, k, c = scene(rng, size, radius, one=bool(rng.random() < one_frac))
        prompt = build_prompt(f"reach the {COLOURS[k]} ball")
        row = (
            processor.tokenizer(prompt)["input_ids"]
            + [processor.empty_token_id]
            + [model.action_placeholder_id] * 2
        )
        images.append(image)
        ids.append(row)
        targets.append(c[k])
        centres.append(c)
        named.append(k)
    if len({len(r) for r in ids}) != 1:
        raise ValueError("the colour words tokenise to different lengths; pad the prompts")
    return {
        "input_ids": torch.tensor(ids),
        "pixel_values": processor.pixel_values(images),
        "target": torch.tensor(np.array(targets), dtype=torch.float32),
        "centres": np.array(centres),
        "named": np.array(named),
    }


def predict(model, batch: dict) -> torch.Tensor:
    """[B, 2] the position the l1 head reads from the last two (placeholder) positions."""
    head = model.head
    hidden = model(batch["input_ids"], batch["pixel_values"], output="hidden").hidden
    return head.actions(hidden[:, -head.n_actions :])[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=112, help="image side in pixels (a multiple of 14)")
    p.add_argument("--radius-div", type=float, default=14.0, help="disc radius = size / this")
    p.add_argument(
        "--one-frac", type=float, default=0.0, help="share of training scenes with only the named disc"
    )
    p.add_argument("--film", action="store_true", help="FiLM: the prompt modulates the vision blocks")
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scenes", type=int, default=2000, help="training scenes (drawn once, reused)")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    arch = TinyArchitecture(image_size=args.size, llm_layers=args.llm_layers)
    model = build_tiny_model(arch, seed=args.seed)
    model.set_layout(ActionLayout(head="l1", chunk_size=1, action_dim=2, film=args.film), seed=args.seed)
    radius = args.size / args.radius_div
    train = encode(model, np.random.default_rng(args.seed), args.scenes, args.size, radius, args.one_frac)
    held_frac = 1.0 if args.one_frac == 1.0 else 0.0
    held = encode(model, np.random.default_rng(10_000 + args.seed), 200, args.size, radius, held_frac)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed + 1)
    print(
        f"size {args.size} radius {radius:.1f} px one_frac={args.one_frac} film={args.film} "
        f"llm_layers={args.llm_layers} lr={args.lr}",
        flush=True,
    )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        idx = torch.from_numpy(rng.integers(args.scenes, size=args.batch))
        batch = {k: train[k][idx] for k in ("input_ids", "pixel_values", "target")}
        loss = torch.nn.functional.mse_loss(predict(model, batch), batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                chunks = [
                    {k: held[k][i : i + 50] for k in ("input_ids", "pixel_values")} for i in range(0, 200, 50)
                ]
                pred = torch.cat([predict(model, chunk) for chunk in chunks]).numpy()
            err = np.linalg.norm(pred - held["target"].numpy(), axis=1).mean() * args.size / 2
            nearest = np.linalg.norm(held["centres"] - pred[:, None], axis=2).argmin(1)
            named = (nearest == held["named"]).mean()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  held-out error {err:5.1f} px  "
                f"nearest the named disc {named:.2f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
