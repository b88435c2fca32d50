import math

import pytest
import torch

from body.rotations import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rotation_6d, rotation_6d_to_matrix
from lightning_modules.mesh_metrics import FScore, MeanPointError, procrustes_align


def rotation_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_procrustes_recovers_a_hand_made_similarity_transform():
    target = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]], dtype=torch.float64)
    # source = target rotated 90 degrees about z, scaled by 2 and shifted: alignment must undo all three
    source = 2.0 * target @ rotation_z(math.pi / 2).T + torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(procrustes_align(source, target), target)


def test_procrustes_never_reflects():
    target = torch.randn(1, 10, 3, dtype=torch.float64)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    aligned = procrustes_align(mirrored, target)
    assert (aligned - target).norm(dim=-1).mean() > 0.1  # a mirror image cannot be rotated onto the original


def test_mpjpe_and_pa_mpjpe_by_hand():
    target = torch.zeros(2, 3, 3)
    target[:, 1, 0], target[:, 2, 1] = 1.0, 1.0
    pred = target.clone()
    pred[0, 2] += torch.tensor([0.0, 0.0, 0.003])  # one joint 3 mm off in sample 0
    pred[1] = pred[1] @ rotation_z(0.3).float().T  # sample 1: rotated about the root, exact after alignment
    mpjpe, pa_mpjpe = MeanPointError(), MeanPointError(procrustes=True)
    mpjpe.update(pred, target)
    pa_mpjpe.update(pred[1:], target[1:])
    rotated_error = (pred[1] - target[1]).norm(dim=-1).mean() * 1000
    assert mpjpe.compute().item() == pytest.approx(((3.0 / 3) + rotated_error.item()) / 2, rel=1e-5)
    assert pa_mpjpe.compute().item() == pytest.approx(0.0, abs=1e-4)


def test_f_score_thresholds():
    target = torch.rand(1, 50, 3, dtype=torch.float64)
    near = target + torch.tensor([0.002, 0.0, 0.0], dtype=torch.float64)  # 2 mm everywhere, before alignment
    half_far = target.clone()
    half_far[:, 25:] += torch.randn(1, 25, 3, dtype=torch.float64) * 0.5
    f5, f15 = FScore(5.0), FScore(15.0)
    f5.update(near, target)
    assert f5.compute().item() == pytest.approx(1.0)
    f15.update(target, target)
    assert f15.compute().item() == pytest.approx(1.0)
    far = FScore(5.0)
    far.update(half_far, target)
    assert far.compute().item() < 0.9


def test_6d_round_trip_and_axis_angle():
    axis_angle = torch.randn(64, 3, dtype=torch.float64)
    axis_angle = axis_angle / axis_angle.norm(dim=-1, keepdim=True) * torch.rand(64, 1, dtype=torch.float64) * 3.0
    matrix = axis_angle_to_matrix(axis_angle)
    torch.testing.assert_close(matrix @ matrix.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3))
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(matrix)), matrix)
    torch.testing.assert_close(matrix_to_axis_angle(matrix), axis_angle)
    torch.testing.assert_close(axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))
    about_z = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(axis_angle_to_matrix(about_z), rotation_z(0.3))


def test_6d_of_an_arbitrary_output_is_a_rotation():
    matrix = rotation_6d_to_matrix(torch.randn(16, 6))
    torch.testing.assert_close(matrix @ matrix.transpose(-1, -2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(matrix), torch.ones(16))
