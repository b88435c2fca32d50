"""Reconstruction loss of completion pretraining."""

import torch
from torch import Tensor


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch standardisation (CroCo's norm_pix target), with the statistics to undo it.

    Normalising each patch removes its mean colour and contrast from the target, so the network
    spends its capacity on structure rather than on matching brightness.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return (patches - mean) / std, mean, std


def masked_patch_mse(pred: Tensor, target_patches: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """Mean squared error over the hidden patches only, one value per sample.

    pred, target_patches: (B, N, P); mask: (B, N) bool, True = hidden (the only patches scored:
    visible ones are trivial to copy). Computed in float32 whatever the autocast dtype.
    """
    target = target_patches.float()
    if norm_pix:
        target = normalize_patches(target)[0]
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def sum_by_pair_type(per_sample: Tensor, pair_type: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
    """Split a per-sample loss by pair type: each term is that type's share of the batch mean.

    The terms add up to the total loss (L = L_view + L_pose, as in CroCo-Man), whatever mix of
    pair types a batch holds.
    """
    batch = per_sample.shape[0]
    return {name: torch.where(pair_type == i, per_sample, 0.0).sum() / batch for i, name in enumerate(names)}
