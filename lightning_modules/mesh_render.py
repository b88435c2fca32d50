"""Meshes drawn over their images, for validation pictures and ``crocoman predict``.

A small painter's-algorithm rasteriser with PIL: faces sorted far to near, flat-shaded by how
much they face the camera, blended over the image. It needs no OpenGL or CUDA extension, so it
runs on a cluster's login node and in CI; a few thousand faces take tens of milliseconds.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from body.camera import project

MESH_COLOUR = np.array([0.65, 0.74, 0.86])


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) float image in [0, 1] -> 8-bit PIL image."""
    return Image.fromarray((image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def from_pil(image: Image.Image) -> Tensor:
    """8-bit PIL image -> (3, H, W) float image in [0, 1]."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def overlay_mesh(image: Tensor, vertices_cam: Tensor, faces: Tensor, K: Tensor, alpha: float = 0.7) -> Tensor:
    """(3, H, W) image in [0, 1] with the mesh (V, 3 camera-frame metres; faces (F, 3)) drawn over it.

    Faces behind the camera are left out; faces seen edge-on or from behind get the darkest shade.
    """
    vertices = vertices_cam.detach().double().cpu()
    faces = faces.detach().long().cpu()
    pixels = project(vertices[None], K.detach().double().cpu()[None])[0]
    triangles = vertices[faces]  # (F, 3, 3)
    normals = torch.linalg.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    centres = triangles.mean(1)
    # Facing the camera: the normal points back along the viewing ray (OpenCV: camera looks down +z).
    facing = -(torch.nn.functional.normalize(normals, dim=-1) * torch.nn.functional.normalize(centres, dim=-1)).sum(-1)
    in_front = triangles[..., 2].min(1).values > 1e-3
    order = torch.argsort(centres[:, 2], descending=True)
    canvas = to_pil(image)
    layer = canvas.copy()
    draw = ImageDraw.Draw(layer)
    corners = pixels[faces].numpy()
    shades = (0.35 + 0.65 * facing.clamp(0, 1)).numpy()
    keep = in_front.numpy()
    for face in order.tolist():
        if keep[face]:
            colour = tuple(int(255 * c) for c in MESH_COLOUR * shades[face])
            draw.polygon([tuple(point) for point in corners[face]], fill=colour)
    return from_pil(Image.blend(canvas, layer, alpha))


def draw_keypoints(image: Tensor, keypoints_px: Tensor, colour: tuple[int, int, int], radius: int = 1) -> Tensor:
    """(3, H, W) image with a dot per keypoint (J, 2+) pixel position; keypoints with zero confidence are skipped."""
    canvas = to_pil(image)
    draw = ImageDraw.Draw(canvas)
    for point in keypoints_px.detach().cpu().tolist():
        if len(point) > 2 and point[2] <= 0:
            continue
        x, y = point[0], point[1]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return from_pil(canvas)
