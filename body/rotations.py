"""Rotations: axis-angle (SMPL's convention, on disk), matrices, and the 6D representation heads regress.

The 6D representation (the first two columns of the rotation matrix, Zhou et al. 2019) has no
discontinuity, unlike axis-angle or quaternions, so small output changes always mean small
rotation changes.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two predicted columns."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-1)


def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, in the order ``rotation_6d_to_matrix`` reads."""
    return torch.cat((matrix[..., :, 0], matrix[..., :, 1]), dim=-1)


def skew_matrix(vector: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) the matrix of the cross product with ``vector``."""
    x, y, z = vector.unbind(-1)
    zeros = torch.zeros_like(x)
    return torch.stack((zeros, -z, y, z, zeros, -x, -y, x, zeros), dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3), the exponential of the skew matrix (Rodrigues' rotation, exact at zero angle)."""
    return torch.linalg.matrix_exp(skew_matrix(axis_angle))


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 3), angles in [0, pi].

    Through the unit quaternion, taken from whichever of w, x, y, z is largest (Shepperd), so it
    stays accurate near 0 and near pi where the trace formula loses all precision.
    """
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    d0, d1, d2, d3 = 1 + trace, *(1 + 2 * m[..., k, k] - trace for k in range(3))  # 4 q_k^2
    wx, wy, wz = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    outer = torch.stack(  # 4 q q^T, q = (w, x, y, z): each row is q scaled by 4 q_k
        [
            torch.stack([d0, wx, wy, wz], -1),
            torch.stack([wx, d1, xy, xz], -1),
            torch.stack([wy, xy, d2, yz], -1),
            torch.stack([wz, xz, yz, d3], -1),
        ],
        dim=-2,
    )
    best = torch.stack([d0, d1, d2, d3], -1).argmax(-1)
    row = torch.take_along_dim(outer, best[..., None, None].expand(*best.shape, 1, 4), dim=-2)[..., 0, :]
    quaternion = F.normalize(row, dim=-1)
    quaternion = quaternion * torch.where(quaternion[..., :1] < 0, -1.0, 1.0)  # w >= 0: angle <= pi
    sin_half = quaternion[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quaternion[..., :1])
    # angle / sin(angle / 2) -> 2 as the angle -> 0
    scale = torch.where(sin_half > 1e-7, angle / sin_half.clamp_min(1e-7), 2.0)
    return quaternion[..., 1:] * scale


def rotation_between(source: Tensor, target: Tensor) -> Tensor:
    """(..., 3) unit vectors -> (..., 3, 3) the smallest rotation taking ``source`` to ``target``
    (Rodrigues about their cross product); for opposite vectors, a half turn about an axis
    perpendicular to ``source``."""
    cross = torch.linalg.cross(source, target, dim=-1)
    cos = (source * target).sum(-1)[..., None, None]
    skew = skew_matrix(cross)
    eye = torch.eye(3, dtype=source.dtype, device=source.device).expand_as(skew)
    opposite = cos < -1 + 1e-6
    rotation = eye + skew + skew @ skew / (1 + cos).where(~opposite, torch.ones_like(cos))
    helper = torch.eye(3, dtype=source.dtype, device=source.device)[source.abs().argmin(-1)]
    axis = F.normalize(torch.linalg.cross(source, helper, dim=-1), dim=-1)
    half_turn = 2 * axis[..., :, None] * axis[..., None, :] - eye
    return rotation.where(~opposite, half_turn)


def rotation_fitting(source: Tensor, target: Tensor) -> Tensor:
    """(B, K, 3), (B, K, 3) with K >= 2 -> (B, 3, 3) the rotation best taking the ``source``
    directions onto the ``target`` ones (Kabsch, no reflection)."""
    u, _, vt = torch.linalg.svd(source.mT @ target)
    sign = torch.sign(torch.linalg.det(vt.mT @ u.mT))
    correction = torch.ones_like(u[..., 0])
    correction[..., -1] = sign
    return vt.mT @ torch.diag_embed(correction) @ u.mT
