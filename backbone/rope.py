"""2D rotary position embedding (RoPE) as used by CroCo v2.

The head dimension is split in two halves: the first is rotated by the patch row (y), the
second by the patch column (x), each with a 1D rotate-half RoPE. Attention scores between two
tokens then depend only on their relative offset, which is what lets the decoder relate
patches of two different views without absolute position embeddings.
"""

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RoPE2D(nn.Module):
    """Applies 2D RoPE to per-head tokens.

    The cos/sin tables are precomputed up to ``max_positions`` per axis (non-persistent
    buffers, so checkpoints stay identical to CroCo's parameter-free RoPE) and indexed by the
    integer positions, which keeps the forward free of data-dependent shapes for torch.compile.
    """

    def __init__(self, head_dim: int, base: float = 100.0, max_positions: int = 256) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
        self.base = base
        self.max_positions = max_positions
        half = head_dim // 2
        inv_freq = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float64) / half)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None]
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def _rotate_1d(self, x: Tensor, positions: Tensor) -> Tensor:
        cos = self.cos[positions][:, None]  # (B, 1, N, D/2)
        sin = self.sin[positions][:, None]
        return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, heads, N, head_dim); positions: (B, N, 2) integer (row, column)."""
        y_half, x_half = x.chunk(2, dim=-1)
        return torch.cat(
            (self._rotate_1d(y_half, positions[..., 0]), self._rotate_1d(x_half, positions[..., 1])),
            dim=-1,
        )

    def extra_repr(self) -> str:
        return f"base={self.base}, max_positions={self.max_positions}"
