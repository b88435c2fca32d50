"""2D rotary position embedding (RoPE) as used by CroCo v2.

The head dimension is split in two halves: the first is rotated by the patch row (y), the
second by the patch column (x), each with a 1D rotate-half RoPE. Attention scores between two
tokens then depend only on their relative offset, which is what lets the decoder relate
patches of two different views without absolute position embeddings.
"""

import torch
from torch import Tensor, nn


class RoPE2D(nn.Module):
    """Applies 2D RoPE to per-head tokens.

    Written for speed, eager and compiled, since it runs on q and k in every block: the cos and
    sign-folded sin of every token are gathered once per sequence (``tables``) and shared by all
    blocks, so a block only computes ``x * cos + swap(x) * sin`` (``rotate``), where the rotate-half
    of both axis halves is a single ``flip``. Tokens are rotated where the qkv projection leaves them,
    token-major (B, N, heads, head_dim), so the rotation and its gradient are written in the
    projection's own layout, with no transpose (attention takes a transposed view). The product
    runs in the input dtype, as in CroCo and timm: bf16 rounds the tables and products (about one
    bf16 ulp more than a float32 pass), far below what training in bf16 already tolerates.

    The angles are precomputed up to ``max_positions`` per axis (non-persistent buffer, so
    checkpoints stay identical to CroCo's parameter-free RoPE) and indexed by the integer
    positions, which keeps the forward free of data-dependent shapes for torch.compile.
    """

    def __init__(self, head_dim: int, base: float = 100.0, max_positions: int = 256) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
        self.base = base
        self.max_positions = max_positions
        half = head_dim // 2
        inv_freq = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float64) / half)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None]  # (P, D/4)
        cos, sin = angles.cos(), angles.sin()
        # Per axis (width D/2): cos repeated over both quarters; sin carries rotate_half's sign,
        # -sin where the swapped-in partner is the second quarter, +sin where it is the first.
        table = torch.stack((torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)))  # (cos|sin, P, D/2)
        self.register_buffer("table", table.float(), persistent=False)

    def tables(self, positions: Tensor) -> Tensor:
        """(B, N, 2) integer (row, column) -> (cos|sin, B, N, 1, head_dim) float32, for ``rotate``.

        The row rotates the first half of each head, the column the second; the singleton dim
        broadcasts over heads.
        """
        return self.table[:, positions].flatten(-2)[..., None, :]

    @staticmethod
    def rotate(x: Tensor, tables: Tensor) -> Tensor:
        """x: (..., B, N, heads, head_dim); tables: from ``tables`` for the positions of x's tokens."""
        cos, sin = tables.to(x.dtype)
        swapped = x.unflatten(-1, (2, 2, -1)).flip(-2).flatten(-3)  # quarters swapped within each axis half
        return torch.addcmul(x * cos, swapped, sin)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """``rotate`` x by the tables of ``positions`` (B, N, 2)."""
        return self.rotate(x, self.tables(positions))

    def extra_repr(self) -> str:
        return f"base={self.base}, max_positions={self.max_positions}"
