"""Image bytes to the network's crop in one pass: header read, reduced-size JPEG decode, crop and resize.

The loaders used to decode with PIL, convert to a tensor and crop with torchvision; OpenCV decodes
a JPEG ~25% faster than PIL, decodes at 1/2, 1/4 or 1/8 size in the DCT domain when the crop will
shrink that much anyway, and resizes a crop ~5x faster than torchvision (`make bench`, data case).
Everything stays uint8 (H, W, C) here; the model side converts once, after collation.

EXIF orientation is ignored, as PIL's decoder did: intrinsics and keypoints in our shards refer to
the stored pixel grid.
"""

import functools
import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import RandomResizedCrop

from datamodules.format.geometry import Box, crop_affine  # noqa: F401 (crop_affine lived here before the format module)


@functools.cache
def opencv():
    """OpenCV, imported where images are decoded (the loader workers), not when crocoman is imported: its
    import starts a thread, and a training process should hold as few threads as it can when it forks
    its loader workers (a fork taken while another thread holds a lock leaves the worker hung; seen in
    the two-rank tests). One worker is one core, so OpenCV's own thread pool stays off."""
    import cv2

    cv2.setNumThreads(0)
    return cv2


@functools.cache
def _read_flags(reduce: int) -> int:
    """RGB at full, 1/2, 1/4 or 1/8 size (the reduced flags are BGR ones: swap their colour bit for RGB's)."""
    cv2 = opencv()
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    return (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raises PIL's ``UnidentifiedImageError`` (a counted
    ``corrupt_image`` skip) for bytes that are no image."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def decode(data: bytes, channels: int = 3, reduce: int = 1) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) single-channel uint8 pixels, at 1/``reduce`` size (1, 2, 4, 8).

    A JPEG cut short is an error (``OSError``, counted as ``corrupt_image``): libjpeg would fill the
    missing rows with grey and only print a warning.
    """
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise OSError("JPEG data is truncated (no end-of-image marker)")
    cv2 = opencv()
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION if channels == 1 else _read_flags(reduce)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        raise OSError(f"OpenCV cannot decode this image ({len(data)} bytes, starts {data[:8]!r})")
    return pixels


def random_box(width: int, height: int, scale: tuple[float, float]) -> Box:
    """torchvision ``RandomResizedCrop``'s box (its own draw, from the torch generator) for an image of this size."""
    return tuple(RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, height, width), list(scale),
                                              [3 / 4, 4 / 3]))


def reduction(box: Box, size: int) -> int:
    """The largest DCT scale-down (1, 2, 4, 8) after which the crop still needs no enlarging."""
    shortest = min(box[2], box[3])
    return max((r for r in (1, 2, 4, 8) if shortest >= r * size), default=1)


def resized_crop(pixels: np.ndarray, box: Box, size: int, nearest: bool = False) -> np.ndarray:
    """``box`` of ``pixels`` resized to ``size`` x ``size``: area averaging when shrinking (antialiased),
    bilinear when enlarging, pixel-centre nearest for label maps (part ids stay part ids)."""
    cv2 = opencv()
    top, left, height, width = box
    region = pixels[top:top + height, left:left + width]
    if nearest:
        interpolation = cv2.INTER_NEAREST_EXACT
    else:
        interpolation = cv2.INTER_AREA if height > size and width > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def decode_crop(data: bytes, box: Box, size: int) -> tuple[np.ndarray, Box]:
    """Decode image bytes at the smallest size that keeps ``box`` (source pixels) at least ``size`` on a
    side, and resize that region to ``size`` x ``size``. Returns (size, size, 3) uint8 pixels and the
    box they show, in source pixels (crop label maps and move keypoints with that one).

    A 1/r decode's pixel i covers source pixels [r i, r i + r), so a box on its grid is an exact
    source box r times larger: the drawn box moves by at most r / 2 source pixels, under half an
    output pixel.
    """
    reduce = reduction(box, size)
    pixels = decode(data, reduce=reduce)
    if reduce == 1:
        return resized_crop(pixels, box, size), box
    width, height = image_size(data)
    whole = (height // reduce, width // reduce)  # reduced pixels that cover r x r source pixels
    top, left = (min(round(edge / reduce), limit - 1) for edge, limit in zip(box[:2], whole))
    height, width = (max(1, min(round(extent / reduce), limit - start))
                     for extent, limit, start in zip(box[2:], whole, (top, left)))
    reduced = (top, left, height, width)
    return resized_crop(pixels, reduced, size), tuple(reduce * v for v in reduced)


def decode_warp(data: bytes, affine: Tensor, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the image resampled (bilinear, black outside) so that source pixel p lands on
    ``affine @ p`` (3x3, pixel centres at integers); decoded at 1/r size while the map still shrinks it."""
    scale = float(torch.linalg.det(affine[:2, :2]).abs().sqrt())  # output pixels per source pixel
    reduce = max((r for r in (1, 2, 4, 8) if r * scale <= 1.0), default=1)
    pixels = decode(data, reduce=reduce)
    # a reduced pixel q sits at source r q + (r - 1) / 2
    to_source = torch.tensor([[reduce, 0.0, (reduce - 1) / 2], [0.0, reduce, (reduce - 1) / 2], [0.0, 0.0, 1.0]],
                             dtype=torch.float64)
    return warp_pixels(pixels, affine.double() @ to_source, size)


def warp_pixels(pixels: np.ndarray, affine: Tensor, size: int, nearest: bool = False) -> np.ndarray:
    """``pixels`` resampled so that pixel p lands on ``affine @ p`` in a ``size`` x ``size`` output, zero
    outside; bilinear, or nearest for label maps (a warp rounds the mapped pixel centre: exact)."""
    cv2 = opencv()
    return cv2.warpAffine(pixels, affine[:2].double().numpy(), (size, size), borderMode=cv2.BORDER_CONSTANT,
                          flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderValue=0)


def to_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 (H, W, C) or (H, W) pixels as a (C, H, W) or (H, W) uint8 tensor: a view on the array, since
    collation copies every sample into the batch anyway."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor
