"""The small trainable modules a fine-tune adds beside OpenVLA's weights (OpenVLA-OFT's design).

`ActionMLP` maps the LLM's final hidden states at one chunk step's D action positions to that step's D
normalized actions (OFT's `L1RegressionActionHead`: an MLP with residual blocks); with
`model.layout.chunk_positions=steps` a step has one position, whose hidden state alone gives its D values. `ProprioProjector`
maps a normalized robot state to one LLM input embedding (OFT's `ProprioProjector`). A continuous head
with grounding (`model.layout.grounding=G`) has a second `ActionMLP` that maps the G grounding
positions' hidden states to the G grounding values. `FiLM` (OpenVLA-OFT+) lets the instruction scale
and shift the features of every vision block. Their weights live in the model's safetensors under the
prefixes `action_head.`, `proprio_projector.`, `grounding_head.` and `film.`; a model without them
(every OpenVLA checkpoint) has none of these keys.
"""

from __future__ import annotations

import torch
from torch import nn

ACTION_HEAD_PREFIX = "action_head."
PROPRIO_PREFIX = "proprio_projector."
GROUNDING_PREFIX = "grounding_head."
FILM_PREFIX = "film."
MODULES = ("action_head", "proprio_projector", "grounding_head", "film")  # what `build_modules` may add


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(self.norm(x)))


class ActionMLP(nn.Module):
    """[..., P * H] (a chunk step's P hidden states, concatenated) -> [..., D] normalized actions; P is
    `positions` (default D: one position per value, OpenVLA-OFT)."""

    def __init__(self, llm_dim: int, action_dim: int, blocks: int = 2, positions: int | None = None):
        super().__init__()
        self.action_dim = action_dim
        self.positions = action_dim if positions is None else positions
        self.norm_in = nn.LayerNorm(self.positions * llm_dim)
        self.fc_in = nn.Linear(self.positions * llm_dim, llm_dim)
        self.act = nn.ReLU()
        self.blocks = nn.ModuleList([_ResidualBlock(llm_dim) for _ in range(blocks)])
        self.norm_out = nn.LayerNorm(llm_dim)
        self.fc_out = nn.Linear(llm_dim, action_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc_in(self.norm_in(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc_out(self.norm_out(x))

    @property
    def size(self) -> tuple[int, int]:
        """(D outputs, P input positions): what `module_sizes` asks for."""
        return self.action_dim, self.positions


class ProprioProjector(nn.Module):
    """[B, S] normalized robot state -> [B, H] one input embedding of the LLM."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.proprio_dim = proprio_dim
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(state)))

    @property
    def size(self) -> int:
        """S state values: what `module_sizes` asks for."""
        return self.proprio_dim


class FiLM(nn.Module):
    """OpenVLA-OFT+'s FiLM: the instruction's mean input embedding [B, H] -> a (gamma, beta) pair
    [B, C] per vision block that runs (a tower's blocks but its unused last one), applied after the
    block's attention as `x * (1 + gamma) + beta` (`vla.model.vision.Block`). Initialised to zero, so a
    new FiLM leaves a base model's vision features exactly as they were."""

    size = 1  # what `module_sizes` asks for: on or off

    def __init__(self, llm_dim: int, towers: list[tuple[int, int]]):
        """`towers`: (width, blocks that run) per vision tower."""
        super().__init__()
        self.towers = nn.ModuleList(
            nn.ModuleList(nn.Linear(llm_dim, 2 * width) for _ in range(blocks)) for width, blocks in towers
        )
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, language: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        weight = self.towers[0][0].weight
        language = language.to(weight.dtype)
        return [[layer(language).chunk(2, dim=-1) for layer in tower] for tower in self.towers]


def module_sizes(layout) -> dict[str, int | tuple[int, int]]:
    """The size of each of `MODULES` that `layout` (an `ActionLayout`) needs (the module's `size`); 0:
    not needed. An `ActionMLP`'s is (outputs, input positions): the action head's (D, D or 1), the
    grounding head's (G, G)."""
    g = layout.grounding_values
    return {
        "action_head": (layout.action_dim, layout.step_positions) if layout.continuous else 0,
        "proprio_projector": layout.proprio_dim,
        "grounding_head": (g, g) if g else 0,
        "film": FiLM.size if layout.film else 0,
    }


def build_modules(model: nn.Module, layout, llm_dim: int, seed: int = 0) -> None:
    """Give `model` the modules its layout (`ActionLayout`) needs (`module_sizes`), keeping ones that
    already have the right sizes (loaded or trained weights) and removing ones the layout no longer has.
    New weights are drawn from `seed`, not from torch's global generator, so adding them changes no
    other random draw of a run."""
    make = {
        "action_head": lambda size: ActionMLP(llm_dim, size[0], positions=size[1]),
        "proprio_projector": lambda size: ProprioProjector(size, llm_dim),
        "grounding_head": lambda size: ActionMLP(llm_dim, size[0], positions=size[1]),
        "film": lambda size: FiLM(llm_dim, model.vision_backbone.film_towers),
    }
    for name, size in module_sizes(layout).items():
        current = getattr(model, name, None)
        current = getattr(current, "original_module", current)  # PEFT's modules_to_save wrapper
        have = getattr(current, "size", None)
        if size and have == size:
            continue
        if size:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = make[name](size)
            reference = next(model.projector.parameters())
            setattr(model, name, module.to(reference.device))
        elif current is not None:
            setattr(model, name, None)
