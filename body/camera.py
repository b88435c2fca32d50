"""Cameras: pinhole projection, and the weak-perspective camera the mesh heads regress with its
perspective translation.

A head predicts ``camera = (s, tx, ty)`` per crop: a point X (metres, in the head's output frame,
camera orientation) lands at ``s * (X_x + tx, X_y + ty)`` in crop coordinates normalised to
[-1, 1] (crop centre 0, left/top edge -1). Regressing ``s`` instead of a depth keeps the output
independent of the crop size and the focal length, which vary between datasets.

For a crop of side ``S`` px seen by a camera of focal ``f`` px with its principal point at the crop
centre, the same projection comes from the translation ``t = (tx, ty, 2 f / (S s))``: a point
near the person's depth moves ``f / t_z`` px per metre, which is ``S s / 2`` px, i.e. ``s`` per
metre in the [-1, 1] frame. The output frame is the one the head's points are in: the body
model's frame for ``ParametricHead`` (root joint where the model puts it), root-relative for
``VertexHead``.
"""

import torch
from torch import Tensor

# A person fills most of a person-centred crop: s = 0.9 puts the 2 m of a standing body across
# 1.8 of the 2 normalised units. The mean camera of SPIN / HMR 2.0 (smpl_mean_params.npz) too.
MEAN_CAMERA = (0.9, 0.0, 0.0)
_MIN_SCALE = 1e-6  # a scale at or below 0 is no camera; clamped so depth stays finite


def project(points_cam: Tensor, K: Tensor) -> Tensor:
    """(B, N, 3) camera-frame points -> (B, N, 2) pixels with per-sample intrinsics K (B, 3, 3)."""
    projected = points_cam @ K.transpose(1, 2)
    return projected[..., :2] / projected[..., 2:].clamp_min(1e-6)


def weak_perspective_to_translation(camera: Tensor, focal_px: float | Tensor, image_size: float | Tensor) -> Tensor:
    """(B, 3) weak-perspective ``(s, tx, ty)`` -> (B, 3) camera translation in metres (OpenCV axes).

    ``focal_px`` and ``image_size`` (the crop side in px) are numbers or per-sample (B,) tensors,
    e.g. ``K[:, 0, 0]`` of the batch's crops.
    """
    scale, offset = camera[:, :1], camera[:, 1:]
    focal_px = torch.as_tensor(focal_px, dtype=camera.dtype, device=camera.device).reshape(-1, 1)
    image_size = torch.as_tensor(image_size, dtype=camera.dtype, device=camera.device).reshape(-1, 1)
    depth_m = 2 * focal_px / (image_size * scale.clamp_min(_MIN_SCALE))
    return torch.cat((offset, depth_m), dim=1)


def fit_weak_perspective(points: Tensor, keypoints_px: Tensor, K: Tensor, image_size: float) -> Tensor:
    """The weak-perspective ``(s, tx, ty)`` (B, 3) that best lays ``points`` (B, J, 3), in the output
    frame, onto ``keypoints_px`` (B, J, 2) of a crop of side ``image_size`` px seen through ``K``:
    least squares on ``s * (X + t) = 2 (px - principal point) / image_size``, for heads that
    predict where the joints are instead of a camera."""
    normalised = 2 * (keypoints_px - K[:, None, :2, 2]) / image_size
    xy = points[..., :2]
    xy_mean, uv_mean = xy.mean(1, keepdim=True), normalised.mean(1, keepdim=True)
    centred = xy - xy_mean
    scale = (centred * (normalised - uv_mean)).sum((1, 2)) / centred.pow(2).sum((1, 2)).clamp_min(1e-12)
    scale = scale.clamp_min(_MIN_SCALE)[:, None]
    offset = uv_mean[:, 0] / scale - xy_mean[:, 0]
    return torch.cat((scale, offset), dim=1)
