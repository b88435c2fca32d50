"""Transformer blocks of the CroCo encoder and decoder.

Parameter names follow naver/croco (``attn.qkv``, ``cross_attn.projq``, ``norm_y`` ...) so that
public CroCo checkpoints load without renaming. Attention runs through
``scaled_dot_product_attention``, which picks flash / memory-efficient kernels on GPU.

Positions reach the blocks as RoPE tables (``RoPE2D.tables``), computed once per sequence by the
network rather than gathered again in every block; ``None`` means no rotary embedding.
"""

import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from backbone.rope import RoPE2D


class _HeadsAttention(nn.Module):
    """What self- and cross-attention share: the heads' scaled dot-product attention and the output
    projection. Subclasses create these layers after their input projections: creation order is the
    order a seeded initialisation draws in, so seeded runs keep their numbers."""

    num_heads: int
    attn_drop: float
    proj: nn.Linear
    proj_drop: nn.Dropout

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, N, heads, head_dim) queries, (B, M, heads, head_dim) keys and values -> (B, N, dim)."""
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))


class Attention(_HeadsAttention):
    """Multi-head self-attention, queries and keys rotated by their tokens' RoPE tables if given."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, rope: Tensor | None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)  # (B, N, heads, D)
        if rope is not None:
            q, k = RoPE2D.rotate(q, rope), RoPE2D.rotate(k, rope)
        return self._attend(q, k, v)


class CrossAttention(_HeadsAttention):
    """Queries from image 1 attend to keys/values from image 2; RoPE uses each side's tables."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, N, heads, head_dim), the layout ``RoPE2D.rotate`` works in."""
        return x.unflatten(-1, (self.num_heads, -1))

    def forward(self, query: Tensor, memory: Tensor, query_rope: Tensor | None,
                memory_rope: Tensor | None) -> Tensor:
        q, k, v = self._heads(self.projq(query)), self._heads(self.projk(memory)), self._heads(self.projv(memory))
        if query_rope is not None:
            q, k = RoPE2D.rotate(q, query_rope), RoPE2D.rotate(k, memory_rope)
        return self._attend(q, k, v)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: self-attention then MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: Tensor | None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Self-attention over image-1 tokens, cross-attention to image-2 tokens, then MLP.

    Image-2 tokens (``memory``) are only normalised here, never updated, as in CroCo: the second
    view is a fixed reference the first view is completed from.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm_y = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, rope: Tensor | None, memory_rope: Tensor | None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope))
        memory = self.norm_y(memory)
        x = x + self.drop_path(self.cross_attn(self.norm2(x), memory, rope, memory_rope))
        return x + self.drop_path(self.mlp(self.norm3(x)))
