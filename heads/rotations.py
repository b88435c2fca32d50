"""Rotation representations for regression heads.

Heads regress the continuous 6D representation (the first two columns of the rotation matrix,
Zhou et al. 2019): unlike axis-angle or quaternions it has no discontinuity, so small output
changes always mean small rotation changes. Data stays axis-angle on disk (SMPL's convention).
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
    """(..., 3) -> (..., 3, 3), Rodrigues' formula; exact at zero angle."""
    angle = axis_angle.norm(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    skew = skew_matrix(axis_angle / angle.squeeze(-1).clamp_min(1e-12))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + angle.sin() * skew + (1 - angle.cos()) * skew @ skew


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 3) for angles in [0, pi), via the skew part of the matrix."""
    cos = ((matrix.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos)
    skew = torch.stack((matrix[..., 2, 1] - matrix[..., 1, 2], matrix[..., 0, 2] - matrix[..., 2, 0],
                        matrix[..., 1, 0] - matrix[..., 0, 1]), dim=-1)
    scale = torch.where(angle < 1e-6, 0.5 + angle**2 / 12, angle / (2 * angle.sin().clamp_min(1e-12)))
    return skew * scale[..., None]


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
