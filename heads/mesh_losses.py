"""Mesh-recovery losses that tolerate partial labels (4D-Humans style).

Every term is one value per sample, weighted by per-joint confidences where the labels have them,
and averaged over the samples whose ``has_*`` flag is set: datasets with only 2D keypoints,
pseudo-labelled parameters or full 3D share one batch, and a batch without any sample of a kind
contributes an exact zero for that term (not a NaN). They live with the heads because a head names
its own terms (``heads.mesh_head.MeshHead.loss_terms``); the mesh task uses the keypoint and vertex
terms on every head's mesh.
"""

import torch
from torch import Tensor


def masked_mean(per_sample: Tensor, has: Tensor) -> Tensor:
    """Mean of ``per_sample`` (B,) over the samples flagged in ``has`` (B,) bool; 0 when none is."""
    weight = has.to(per_sample.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def confidence_mean(per_joint: Tensor, confidence: Tensor) -> Tensor:
    """(B, J) per-joint errors -> (B,) their mean weighted by the labels' (B, J) confidences; 0 for a
    sample with no confident joint."""
    return (per_joint * confidence).sum(-1) / confidence.sum(-1).clamp_min(1e-6)


def keypoint_2d_loss(pred_px: Tensor, target: Tensor, image_size: int) -> Tensor:
    """Confidence-weighted L1 between projected and labelled keypoints, in units of the crop side.

    target: (B, J, 3) pixels + confidence. Dividing by the crop side makes the term independent of
    the input resolution, so YAML weights carry over between 128 px demos and 256 px runs.
    """
    error = (pred_px - target[..., :2]).abs().sum(-1) / image_size
    return confidence_mean(error, target[..., 2])


def keypoint_3d_loss(pred: Tensor, target: Tensor, root: int = 0) -> Tensor:
    """Confidence-weighted L1 of root-relative 3D joints, in metres: (B, J, 3) vs (B, J, 4)."""
    pred = pred - pred[:, root:root + 1]
    points = target[..., :3] - target[:, root:root + 1, :3]
    return confidence_mean((pred - points).abs().sum(-1), target[..., 3])


def vertex_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 distance of matching vertices (B, V, 3), both already root-relative, in metres."""
    return (pred - target).abs().sum(-1).mean(-1)


def rotation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Squared Frobenius distance of rotation matrices (B, P, 3, 3), averaged over the P joints."""
    return (pred - target).pow(2).sum((-2, -1)).mean(-1)


def pose_prior(pose: Tensor, betas: Tensor, betas_weight: float = 0.1) -> Tensor:
    """A light prior: joint rotations near the rest pose and shape near the mean, per sample.

    It only breaks ties left by 2D-only supervision (a twisted limb projecting to the same pixels);
    it is not a learned prior, so keep its weight small.
    """
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    return (pose - eye).pow(2).sum((-2, -1)).mean(-1) + betas_weight * betas.pow(2).mean(-1)
