"""Colour jitter with torchvision's distribution, drawn in the loader workers and applied where it is cheapest.

torchvision's ``ColorJitter`` on a uint8 tensor costs 1.2 ms a 128 px image and 3 ms a 224 px one on
one core, most of it the hue shift: it was more than half of a pretraining pair's loader time. Here
the parameters are drawn per image in the worker (from the worker's seeded generators, so a resumed
run draws the same ones) and travel with the sample as a vector of 8 numbers (``draw_jitter``); the
jitter itself runs either in the worker on the image's uint8 pixels with OpenCV (``jitter_pixels``,
~0.3 ms at 224 px) or batched on the batch's device after the transfer (``jitter_batch``), which
leaves the workers only decoding and cropping.

Both follow ``torchvision.transforms.v2.ColorJitter``: brightness, contrast and saturation factors
uniform in [max(0, 1 - s), 1 + s], a hue shift uniform in [-h, h] (fraction of the colour circle),
the four applied in a random order, each result clamped to [0, 1]; grey is ITU-R 601 luma.
"""

import random

import numpy as np
import torch
from torch import Tensor

from datamodules.decode import opencv

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op ids, also their positions in the factor half
_LUMA = (0.299, 0.587, 0.114)


def draw_jitter(strength: float, hue: float) -> Tensor:
    """One image's jitter: (brightness, contrast, saturation, hue shift, order of the four ops).

    Drawn with Python's generator, which ``StreamSeeds`` seeds per worker and epoch like torch's:
    a tenth of the time of torch's scalar draws, which were a tenth of a device-mode pair's cost.
    """
    factors = [random.uniform(max(0.0, 1.0 - strength), 1.0 + strength) for _ in range(3)]
    order = random.sample(range(4), 4)
    return torch.tensor([*factors, random.uniform(-hue, hue), *order], dtype=torch.float32)


def jitter_or_defer(pixels: np.ndarray, params: Tensor, on_device: bool, sample: dict, key: str) -> np.ndarray:
    """Apply ``params`` to these uint8 pixels, or leave them as they are and put the parameters in
    ``sample[f"{key}_jitter"]``, where ``ShardDataModule.on_after_batch_transfer`` applies them."""
    if on_device:
        sample[f"{key}_jitter"] = params
        return pixels
    return jitter_pixels(pixels, params)


def jittered(pixels: np.ndarray, strength: float, on_device: bool, sample: dict, key: str) -> np.ndarray:
    """Draw one image's jitter (hue gets a quarter of ``strength``, as in every crocoman DataModule) and
    ``jitter_or_defer`` it."""
    return jitter_or_defer(pixels, draw_jitter(strength, strength / 4), on_device, sample, key)


# Worker side: one (H, W, 3) uint8 image, each op rounded back to uint8 as torchvision's uint8 path does
# (there it truncates): OpenCV lookup tables and colour matrices, a tenth of torchvision's time.

_RAMP = np.arange(256, dtype=np.float32)


def _lookup(pixels: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """``clamp(scale * v + offset)`` for every 8-bit value v, as one table lookup."""
    return opencv().LUT(pixels, np.clip(_RAMP * scale + (offset + 0.5), 0.0, 255.0).astype(np.uint8))


def _brightness_pixels(pixels: np.ndarray, factor: float) -> np.ndarray:
    return _lookup(pixels, factor, 0.0)


def _contrast_pixels(pixels: np.ndarray, factor: float) -> np.ndarray:
    cv2 = opencv()
    mean = cv2.mean(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY))[0]
    return _lookup(pixels, factor, (1.0 - factor) * mean)


def _saturation_pixels(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Blend with grey as one 3x3 colour matrix: factor * I + (1 - factor) * luma rows (saturating)."""
    matrix = (1.0 - factor) * np.tile(np.array(_LUMA, np.float32), (3, 1)) + factor * np.eye(3, dtype=np.float32)
    return opencv().transform(pixels, matrix)


def _hue_pixels(pixels: np.ndarray, shift: float) -> np.ndarray:
    """Float HSV (hue in degrees, continuous as torchvision's) and back: 8-bit HSV would quantise the hue."""
    cv2 = opencv()
    image = np.multiply(pixels, np.float32(1.0 / 255.0), dtype=np.float32)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] += 360.0 * (shift % 1.0)  # OpenCV wraps hues in [360, 720) back, not negative ones
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), alpha=255.0)  # rounds and saturates


_PIXEL_OPS = {BRIGHTNESS: _brightness_pixels, CONTRAST: _contrast_pixels, SATURATION: _saturation_pixels,
              HUE: _hue_pixels}


def jitter_pixels(pixels: np.ndarray, params: Tensor) -> np.ndarray:
    """Jitter one (H, W, 3) uint8 RGB image with ``params`` (see ``draw_jitter``); returns uint8."""
    factors, order = params[:4].tolist(), params[4:].int().tolist()
    for op in order:
        pixels = _PIXEL_OPS[op](pixels, factors[op])
    return pixels


# Device side: a (B, 3, H, W) float batch in [0, 1], each image with its own parameters.


def _gray_batch(images: Tensor) -> Tensor:
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _hue_batch(images: Tensor, shift: Tensor) -> Tensor:
    """HSV hue rotation in closed form: value (max) and chroma (max - min) are kept, so each channel is
    ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with k = (n + hue * 6) mod 6, n = 5, 3, 1 for R, G, B."""
    value, argmax = images.max(1, keepdim=True)
    chroma = value - images.min(1, keepdim=True).values
    red, green, blue = images.unbind(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))[:, 0]
    sector = torch.stack([(green - blue) / safe, (blue - red) / safe + 2.0, (red - green) / safe + 4.0])
    hue = sector.gather(0, argmax.permute(1, 0, 2, 3)).squeeze(0)  # hue * 6, in (-1, 5]
    hue = torch.remainder(hue + 6.0 * shift.view(-1, 1, 1), 6.0)
    n = images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(n + hue[:, None], 6.0)
    return value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


_BATCH_OPS = {
    BRIGHTNESS: lambda images, f: (images * f).clamp(0.0, 1.0),
    CONTRAST: lambda images, f: (f * images + (1 - f) * _gray_batch(images).mean((2, 3), keepdim=True)).clamp(0, 1),
    SATURATION: lambda images, f: (f * images + (1 - f) * _gray_batch(images)).clamp(0.0, 1.0),
    HUE: lambda images, f: _hue_batch(images, f),
}


def jitter_batch(images: Tensor, params: Tensor) -> Tensor:
    """Jitter a float batch in [0, 1] with per-image ``params`` (B, 8), on its own device.

    At each of the four positions every op is evaluated and each image keeps the one its order names:
    no per-image indexing, so no host synchronisation on a GPU.
    """
    factors, order = params[:, :4].to(images.dtype), params[:, 4:].long()
    for position in range(4):
        chosen = order[:, position].view(-1, 1, 1, 1)
        result = images
        for op, apply in _BATCH_OPS.items():
            result = torch.where(chosen == op, apply(images, factors[:, op].view(-1, 1, 1, 1)), result)
        images = result
    return images
