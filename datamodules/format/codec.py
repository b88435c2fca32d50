"""Members' bytes from values and back. One JPEG quality and one JSON and NPZ layout for every writer, so
synthetic and converted shards decode alike; one decoder of each member for every reader. Equal values give
equal bytes (compact JSON, fixed zip dates), so a dataset is named by its inputs."""

import io
import json
from collections.abc import Collection, Mapping

import numpy as np
import torch
from PIL import Image

from datamodules.format.schema import (
    ARRAYS_KEY,
    GROUP_KEY,
    HAS_FLAGS,
    IMAGE_KEY,
    META_KEY,
    GroupRecord,
    LabelArrays,
    LabelledMeta,
    TarSample,
)

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


def json_bytes(record: Mapping) -> bytes:
    """Compact JSON: ``group.json`` and the labelled ``json``."""
    return json.dumps(record, separators=(",", ":")).encode()


def npz_bytes(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> bytes:
    """The ``npz`` member: float32 arrays, compressed."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()})
    return buffer.getvalue()


def has_flags(present: Collection[str]) -> dict[str, bool]:
    """The ``has`` record: every flag of ``HAS_FLAGS``, true for those ``present``."""
    unknown = set(present) - set(HAS_FLAGS)
    if unknown:
        raise ValueError(f"unknown has flags {sorted(unknown)}; a labelled sample's flags are {HAS_FLAGS}")
    return {flag: flag in present for flag in HAS_FLAGS}


def pack_labelled(key: str, rgb: torch.Tensor, meta: LabelledMeta,
                  arrays: Mapping[str, np.ndarray | torch.Tensor] | None = None,
                  extra: Mapping[str, bytes] | None = None) -> TarSample:
    """One labelled tar sample: ``jpg``, ``json``, ``npz`` when there are arrays, then ``extra`` members
    (``iuv.png``, ``cls``)."""
    sample: TarSample = {"__key__": key, IMAGE_KEY: jpeg_bytes(rgb), META_KEY: json_bytes(meta)}
    if arrays:
        sample[ARRAYS_KEY] = npz_bytes(arrays)
    return sample | dict(extra or {})


def read_group(sample: TarSample) -> GroupRecord:
    """A pair sample's ``group.json``; its frames name their own members."""
    return json.loads(sample[GROUP_KEY])


def labelled_meta(sample: TarSample) -> LabelledMeta:
    """A labelled sample's ``json``."""
    return json.loads(sample[META_KEY])


def labelled_arrays(sample: TarSample) -> LabelArrays[np.ndarray]:
    """A labelled sample's ``npz`` arrays, every one it holds (no pickled objects: ours hold none)."""
    with np.load(io.BytesIO(sample[ARRAYS_KEY]), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
