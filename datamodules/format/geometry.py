"""Crop geometry shared by the writers, which cut person crops from source images, and the readers, which cut
the network's input from a crop: one pixel convention (centres at integers, as OpenCV) for both."""

import numpy as np
import torch
from torch import Tensor

Box = tuple[int, int, int, int]  # top, left, height, width in source pixels


def crop_affine(box: Box, size: int) -> Tensor:
    """The 3x3 map from source pixels to pixels of ``box`` resized to ``size`` x ``size``.

    Pixel centres sit at integer coordinates (OpenCV), hence the half-pixel terms; the same map
    moves 2D keypoints (``map_points``) and intrinsics (``A @ K``).
    """
    top, left, height, width = box
    sx, sy = size / width, size / height
    return torch.tensor([[sx, 0.0, (0.5 - left) * sx - 0.5], [0.0, sy, (0.5 - top) * sy - 0.5], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def map_points(affine: Tensor | np.ndarray, xy: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """(N, 2) pixel positions moved by a 3x3 affine map (``A @ p``), in torch or NumPy alike."""
    return xy @ affine[:2, :2].T + affine[:2, 2]
