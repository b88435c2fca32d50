"""The shard format in code, shared by the writers (``crocoman.synth``, ``crocoman.convert``) and the readers
(this package): how an image becomes the bytes a tar member holds. One JPEG quality for every writer, so
synthetic and converted shards decode alike."""

import io

import numpy as np
import torch
from PIL import Image

JPEG_QUALITY = 90


def jpeg_bytes(rgb: torch.Tensor) -> bytes:
    """JPEG of a uint8 (H, W, 3) image: the ``jpg`` / ``fN.jpg`` members."""
    buffer = io.BytesIO()
    Image.fromarray(rgb.numpy()).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (H, W) or (H, W, 3) array: masks (``fN.mask.png``) and ``iuv.png``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
