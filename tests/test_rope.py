import pytest
import torch

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


def random_positions(batch: int, tokens: int, high: int = 20) -> torch.Tensor:
    return torch.randint(0, high, (batch, tokens, 2))


def test_matches_explicit_pairwise_rotations():
    rope = RoPE2D(head_dim=16, base=100.0)
    x = torch.randn(2, 3, 5, 16)
    pos = random_positions(2, 5)
    expected = torch.cat((explicit_rope_1d(x[..., :8], pos[:, None, :, 0], 100.0),
                          explicit_rope_1d(x[..., 8:], pos[:, None, :, 1], 100.0)), dim=-1)
    torch.testing.assert_close(rope(x, pos), expected, atol=1e-5, rtol=1e-5)


def test_rotation_preserves_norms():
    rope = RoPE2D(head_dim=32)
    x = torch.randn(2, 4, 10, 32)
    torch.testing.assert_close(rope(x, random_positions(2, 10)).norm(dim=-1), x.norm(dim=-1))


def test_scores_depend_only_on_relative_position():
    rope = RoPE2D(head_dim=32)
    q, k = torch.randn(1, 1, 6, 32), torch.randn(1, 1, 6, 32)
    pos_q, pos_k = random_positions(1, 6, 50), random_positions(1, 6, 50)
    shift = torch.tensor([7, 13])
    scores = rope(q, pos_q) @ rope(k, pos_k).transpose(-1, -2)
    shifted = rope(q, pos_q + shift) @ rope(k, pos_k + shift).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)
    # ... and they do depend on it: moving only the keys changes the scores.
    moved = rope(q, pos_q) @ rope(k, pos_k + shift).transpose(-1, -2)
    assert not torch.allclose(scores, moved, atol=1e-3)


def test_row_and_column_rotate_separate_halves():
    rope = RoPE2D(head_dim=8)
    x = torch.randn(1, 1, 1, 8)
    moved_row = rope(x, torch.tensor([[[3, 0]]]))
    torch.testing.assert_close(moved_row[..., 4:], x[..., 4:])  # column half untouched by a row move
    assert not torch.allclose(moved_row[..., :4], x[..., :4])


def test_rejects_head_dim_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPE2D(head_dim=18)


def test_position_zero_is_identity():
    rope = RoPE2D(head_dim=16)
    x = torch.randn(1, 2, 3, 16)
    torch.testing.assert_close(rope(x, torch.zeros(1, 3, 2, dtype=torch.long)), x)
