"""The ViT towers of OpenVLA's vision backbone, written here instead of taken from timm.

Module and parameter names follow timm 0.9.10's VisionTransformer so that OpenVLA checkpoints load
unchanged, except LayerScale's `gamma`, which OpenVLA stores as `scale_factor`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla.model.configuration import ViTSpec


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    # OpenVLA passes act_layer=None, so timm uses exact (erf) GELU.
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, spec.mlp_hidden, spec.act_layer)
        self.ls2 = LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`film`: ([B, C] gamma, [B, C] beta) of OpenVLA-OFT+'s FiLM, applied after the attention."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        if film is not None:
            gamma, beta = film
            x = x * (1 + gamma[:, None].to(x.dtype)) + beta[:, None].to(x.dtype)
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's attention-pool ("map") head. OpenVLA never calls it; it exists so that the
    checkpoint's `attn_pool.*` tensors load and save unchanged."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        dim = spec.embed_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, spec.mlp_hidden, spec.act_layer)


class VisionTransformer(nn.Module):
    """One tower. `forward` returns the patch tokens after the second-to-last block, without the
    final norm, as OpenVLA's `get_intermediate_layers(n={depth - 2})` does."""

    def __init__(self, spec: ViTSpec, image_size: int):
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        n_patches = (image_size // spec.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if spec.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, dim)) if spec.reg_tokens else None
        n_pos = n_patches if spec.no_embed_class else n_patches + spec.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, dim))
        self.patch_embed = PatchEmbed(spec.patch_size, dim)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        # The final norm and last block are in the checkpoint but take no part in OpenVLA's forward.
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn_pool = AttentionPoolLatent(spec) if spec.global_pool == "map" else None

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def _prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = [t for t in (self.cls_token, self.reg_token) if t is not None]
        return [t.expand(x.shape[0], -1, -1) for t in tokens]

    @property
    def used_blocks(self) -> int:
        """The blocks that run (all but the last)."""
        return self.spec.depth - 1

    @property
    def unused_modules(self) -> list[str]:
        """Names (relative to the tower) of the parts kept for the checkpoint that `forward` never runs:
        the last block, the final norm and SigLIP's attention-pool head."""
        names = [f"blocks.{i}" for i in range(self.used_blocks, self.spec.depth)] + ["norm"]
        return names + (["attn_pool"] if self.attn_pool is not None else [])

    def forward(self, pixel_values: torch.Tensor, film: list | None = None) -> torch.Tensor:
        """`film`: a (gamma, beta) pair per block that runs (`vla.model.projectors.FiLM`), or None."""
        x = self.patch_embed(pixel_values)
        if self.spec.no_embed_class:
            x = torch.cat([*self._prefix(x), x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*self._prefix(x), x], dim=1) + self.pos_embed
        for i, block in enumerate(self.blocks[: self.used_blocks]):
            x = block(x, None if film is None else film[i])
        return x[:, self.spec.num_prefix_tokens :]


class VisionBackbone(nn.Module):
    """Fused DINOv2 + SigLIP (`featurizer` reads channels 0-2, `fused_featurizer` channels 3-5, their
    features are concatenated) or a single tower (`featurizer` on 3 channels)."""

    def __init__(self, specs: list[ViTSpec], image_size: int):
        super().__init__()
        self.featurizer = VisionTransformer(specs[0], image_size)
        self.fused_featurizer = VisionTransformer(specs[1], image_size) if len(specs) > 1 else None

    @property
    def embed_dim(self) -> int:
        extra = self.fused_featurizer.embed_dim if self.fused_featurizer is not None else 0
        return self.featurizer.embed_dim + extra

    @property
    def towers(self) -> list[VisionTransformer]:
        return [t for t in (self.featurizer, self.fused_featurizer) if t is not None]

    @property
    def film_towers(self) -> list[tuple[int, int]]:
        """(width, blocks that run) per tower: what `vla.model.projectors.FiLM` modulates."""
        return [(t.embed_dim, t.used_blocks) for t in self.towers]

    def forward(self, pixel_values: torch.Tensor, film: list | None = None) -> torch.Tensor:
        """`film`: per tower, the (gamma, beta) pairs of its blocks (OpenVLA-OFT+), or None."""
        film = film or [None, None]
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values, film[0])
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(first, film[0]), self.fused_featurizer(second, film[1])], dim=2)
