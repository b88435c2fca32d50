import pytest
import torch
import torch.nn.functional as F

from backbone.blocks import Attention, CrossAttention
from backbone.rope import RoPE2D


def explicit_rope_1d(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Reference: rotate each pair (k, k + D/2) by angle pos / base**(2k/D), one pair at a time."""
    D = x.shape[-1]
    out = x.clone()
    for k in range(D // 2):
        angle = pos.double() / base ** (2 * k / D)
        c, s = torch.cos(angle).float(), torch.sin(angle).float()
        a, b = x[..., k], x[..., k + D // 2]
        out[..., k], out[..., k + D // 2] = a * c - b * s, a * s + b * c
    return out


def reference_rope2d(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """The original formula, in float32: chunk into row/column halves, rotate_half RoPE on each."""
    def rotate_half(t: torch.Tensor) -> torch.Tensor:
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat((-t2, t1), dim=-1)

    def rope_1d(t: torch.Tensor, pos1d: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1]
        inv_freq = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float64) / half)
        angles = pos1d.double()[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, N, half)
        return t.float() * angles.cos().float() + rotate_half(t.float()) * angles.sin().float()

    y_half, x_half = x.chunk(2, dim=-1)
    return torch.cat((rope_1d(y_half, pos[..., 0]), rope_1d(x_half, pos[..., 1])), dim=-1)


def heads_first(rope: RoPE2D, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``rope`` on (..., B, heads, N, D), the layout of the references here (RoPE2D works token-major)."""
    return rope(x.transpose(-2, -3), pos).transpose(-2, -3)


def random_positions(batch: int, tokens: int, high: int = 20) -> torch.Tensor:
    return torch.randint(0, high, (batch, tokens, 2))


def test_matches_explicit_pairwise_rotations():
    rope = RoPE2D(head_dim=16, base=100.0)
    x = torch.randn(2, 3, 5, 16)
    pos = random_positions(2, 5)
    expected = torch.cat((explicit_rope_1d(x[..., :8], pos[:, None, :, 0], 100.0),
                          explicit_rope_1d(x[..., 8:], pos[:, None, :, 1], 100.0)), dim=-1)
    torch.testing.assert_close(heads_first(rope, x, pos), expected, atol=1e-5, rtol=1e-5)


def test_rotation_preserves_norms():
    rope = RoPE2D(head_dim=32)
    x = torch.randn(2, 4, 10, 32)
    torch.testing.assert_close(heads_first(rope, x, random_positions(2, 10)).norm(dim=-1), x.norm(dim=-1))


def test_scores_depend_only_on_relative_position():
    rope = RoPE2D(head_dim=32)
    q, k = torch.randn(1, 1, 6, 32), torch.randn(1, 1, 6, 32)
    pos_q, pos_k = random_positions(1, 6, 50), random_positions(1, 6, 50)
    shift = torch.tensor([7, 13])
    scores = heads_first(rope, q, pos_q) @ heads_first(rope, k, pos_k).transpose(-1, -2)
    shifted = heads_first(rope, q, pos_q + shift) @ heads_first(rope, k, pos_k + shift).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)
    # ... and they do depend on it: moving only the keys changes the scores.
    moved = heads_first(rope, q, pos_q) @ heads_first(rope, k, pos_k + shift).transpose(-1, -2)
    assert not torch.allclose(scores, moved, atol=1e-3)


def test_row_and_column_rotate_separate_halves():
    rope = RoPE2D(head_dim=8)
    x = torch.randn(1, 1, 1, 8)
    moved_row = heads_first(rope, x, torch.tensor([[[3, 0]]]))
    torch.testing.assert_close(moved_row[..., 4:], x[..., 4:])  # column half untouched by a row move
    assert not torch.allclose(moved_row[..., :4], x[..., :4])


def test_rejects_head_dim_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPE2D(head_dim=18)


def test_position_zero_is_identity():
    rope = RoPE2D(head_dim=16)
    x = torch.randn(1, 2, 3, 16)
    torch.testing.assert_close(heads_first(rope, x, torch.zeros(1, 3, 2, dtype=torch.long)), x)


@pytest.mark.parametrize("head_dim", [8, 64])
def test_matches_reference_formula_in_float32(head_dim):
    rope = RoPE2D(head_dim, base=100.0)
    x = torch.randn(2, 3, 40, head_dim)
    pos = random_positions(2, 40, high=256)
    torch.testing.assert_close(heads_first(rope, x, pos), reference_rope2d(x, pos, 100.0), atol=1e-6, rtol=1e-6)


def test_bfloat16_stays_bfloat16_and_close_to_float32_reference():
    rope = RoPE2D(64)
    x = torch.randn(2, 3, 40, 64).bfloat16()
    pos = random_positions(2, 40, high=256)
    rotated = heads_first(rope, x, pos)
    assert rotated.dtype == torch.bfloat16
    # ~1 bf16 ulp of |x| <= 4 from rounding the tables and the products; a wrong rotation is O(1) off.
    torch.testing.assert_close(rotated.float(), reference_rope2d(x, pos, 100.0), atol=3e-2, rtol=1.6e-2)


def test_stacked_queries_and_keys_rotate_like_separate_calls():
    rope = RoPE2D(16)
    qk = torch.randn(2, 2, 3, 7, 16)
    pos = random_positions(2, 7)
    torch.testing.assert_close(heads_first(rope, qk, pos), torch.stack([reference_rope2d(t, pos, 100.0) for t in qk]),
                               atol=1e-6, rtol=1e-6)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                        k_pos: torch.Tensor) -> torch.Tensor:
    q, k = reference_rope2d(q, q_pos, 100.0), reference_rope2d(k, k_pos, 100.0)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


@torch.no_grad()
def test_self_attention_rotates_queries_and_keys_by_the_token_positions():
    attn, rope = Attention(32, num_heads=2).eval(), RoPE2D(16)
    x, pos = torch.randn(2, 9, 32), random_positions(2, 9)
    q, k, v = (split_heads(t, 2) for t in attn.qkv(x).chunk(3, dim=-1))
    expected = attn.proj(reference_attention(q, k, v, pos, pos))
    torch.testing.assert_close(attn(x, rope.tables(pos)), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cross_attention_rotates_queries_and_keys_by_their_own_positions():
    attn, rope = CrossAttention(32, num_heads=2).eval(), RoPE2D(16)
    query, memory = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    query_pos, memory_pos = random_positions(2, 5), random_positions(2, 9)
    q, k, v = split_heads(attn.projq(query), 2), split_heads(attn.projk(memory), 2), split_heads(attn.projv(memory), 2)
    expected = attn.proj(reference_attention(q, k, v, query_pos, memory_pos))
    torch.testing.assert_close(attn(query, memory, rope.tables(query_pos), rope.tables(memory_pos)), expected,
                               atol=1e-5, rtol=1e-5)
