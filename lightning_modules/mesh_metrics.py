"""3D human metrics in millimetres: MPJPE, PA-MPJPE, PVE and F-scores, as torchmetrics.

Each metric keeps a sum and a count as states with ``dist_reduce_fx="sum"``, so the value is the
exact mean over every sample seen by every rank, whatever the batch split.
"""

import torch
from torch import Tensor
from torchmetrics import Metric


def procrustes_align(source: Tensor, target: Tensor) -> Tensor:
    """``source`` (B, N, 3) moved by the similarity transform (scale, rotation, translation) that best
    fits ``target`` in the least-squares sense (Umeyama); PA- metrics score shape, not global pose."""
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = torch.linalg.svd(s.transpose(1, 2) @ t)
    sign = torch.sign(torch.linalg.det(u @ vt))  # no reflections
    correction = torch.ones_like(sigma)
    correction[:, -1] = sign
    rotation = u @ torch.diag_embed(correction) @ vt  # applied on the right: s @ rotation
    scale = (sigma * correction).sum(1) / s.pow(2).sum((1, 2))
    return scale[:, None, None] * s @ rotation + mu_t


def root_relative(points: Tensor, root: int | None) -> Tensor:
    return points if root is None else points - points[:, root:root + 1]


class MeanPointError(Metric):
    """Mean Euclidean distance between matching points, in mm (inputs in metres).

    Args:
        procrustes: align each prediction to its target first (PA-MPJPE, PA-MPVPE).
        root: index of the joint subtracted from both sides first (e.g. the pelvis), or None.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, procrustes: bool = False, root: int | None = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.procrustes, self.root = procrustes, root
        self.add_state("total_mm", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, target = root_relative(pred.double(), self.root), root_relative(target.double(), self.root)
        if self.procrustes:
            pred = procrustes_align(pred, target)
        self.total_mm += 1000 * (pred - target).norm(dim=-1).mean(-1).sum()
        self.count += pred.shape[0]

    def compute(self) -> Tensor:
        return (self.total_mm / self.count).float()


class FScore(Metric):
    """F-score of predicted vs target vertices at a distance threshold, after Procrustes alignment
    (the FreiHAND protocol): harmonic mean of precision (predicted points near a target point) and
    recall (target points near a predicted point)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold_mm: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold_m = threshold_mm / 1000
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = procrustes_align(pred.double(), target.double())
        distances = torch.cdist(pred, target.double())
        precision = (distances.min(dim=2).values < self.threshold_m).double().mean(1)
        recall = (distances.min(dim=1).values < self.threshold_m).double().mean(1)
        self.total += (2 * precision * recall / (precision + recall).clamp_min(1e-12)).sum()
        self.count += pred.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count).float()
