"""What the labelled converters (3DPW, FreiHAND, DensePose-COCO, HaGRID) share: the person crop with its
labels moved into it, the labelled sample as `datamodules.format` packs it, nominal intrinsics for
uncalibrated photos, the preview drawing and the body-model loader."""

import colorsys
import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from body.layouts import NUM_PARTS
from crocoman.convert.common import SkipSample, crop_person, rounded, square_crop_box, transform_points
from datamodules.format import (
    ARRAYS_KEY,
    CLASS_KEY,
    IMAGE_KEY,
    IUV_KEY,
    TarSample,
    has_flags,
    labelled_arrays,
    labelled_meta,
    pack_labelled,
)

# Where calibration is unknown (COCO, HaGRID) the crop's K is derived from a nominal camera: focal
# length = the source image's diagonal (as CLIFF assumes), principal point at its centre.
NOMINAL_INTRINSICS = "nominal: focal = source image diagonal, principal point = source image centre"


def nominal_intrinsics(width: int, height: int) -> np.ndarray:
    """The nominal 3x3 K of an uncalibrated `width` x `height` image (see `NOMINAL_INTRINSICS`)."""
    focal_px = float(np.hypot(width, height))
    return np.array([[focal_px, 0.0, (width - 1) / 2], [0.0, focal_px, (height - 1) / 2], [0.0, 0.0, 1.0]])


def crop_bbox(points: np.ndarray, size: int) -> list[float]:
    """[x, y, w, h] of the confident (third column > 0) crop points, cut to the crop."""
    visible = points[points[:, 2] > 0, :2]
    if len(visible) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    low, high = np.clip(visible.min(0), 0, size), np.clip(visible.max(0), 0, size)
    return rounded([*low, *(high - low)])


def crop_labelled(image: Image.Image, around: np.ndarray | Sequence[float], size: int, margin: float, *,
                  min_side_px: float = 16.0) -> tuple[Image.Image, np.ndarray, np.ndarray, list[float]]:
    """The square crop of `image` around (N, 3) keypoints (x, y, confidence) or an [x, y, w, h] box
    (`square_crop_box`), the source -> crop affine, the keypoints (or the box's corners) moved into the
    crop, and their bbox there: every labelled sample's crop, K (`affine @ K`) and bbox come from it."""
    crop, affine = crop_person(image, square_crop_box(around, margin, min_side_px=min_side_px), size)
    points = np.asarray(around, dtype=np.float64)
    if points.ndim == 1:  # a box: its two corners, both confident
        x, y, w, h = points
        points = np.array([[x, y, 1.0], [x + w, y + h, 1.0]])
    crop_points = transform_points(affine, points)
    return crop, affine, crop_points, crop_bbox(crop_points, size)


def crop_projected(image: Image.Image, keypoints_3d: np.ndarray, K: np.ndarray, size: int, margin: float, *,
                   key: str, min_in_view: int = 0) -> tuple[Image.Image, np.ndarray, np.ndarray, list[float]]:
    """`crop_labelled` around camera-space keypoints projected by the image's `K` (calibrated datasets);
    the crop keypoints' confidence is 1 for a joint in front of the camera and inside the image, else 0.
    Fewer than `min_in_view` such joints is a `SkipSample`."""
    projected = keypoints_3d @ K.T
    in_front = projected[:, 2] > 1e-6
    pixels = projected[:, :2] / np.where(in_front, projected[:, 2], 1.0)[:, None]
    inside = in_front & (pixels >= -0.5).all(1) & (pixels < np.array(image.size) - 0.5).all(1)
    if inside.sum() < min_in_view:
        raise SkipSample("person outside the image", f"{key}: {int(inside.sum())} of {len(inside)} joints in view")
    return crop_labelled(image, np.concatenate([pixels, inside[:, None]], axis=1), size, margin)


def labelled_sample(key: str, crop: Image.Image, *, task: str, K: np.ndarray, bbox: list[float], has: set[str],
                    subject: str, body_model: str, arrays: dict[str, np.ndarray] | None = None,
                    files: dict[str, bytes] | None = None, record: dict | None = None) -> TarSample:
    """One labelled tar sample as the synthetic world writes it (`datamodules.format.pack_labelled`): the
    crop, its `json` {task, K (of the crop), bbox, has (the flags in `has`), subject, body_model, plus
    `record`}, `arrays` when given, and `files` (iuv.png, cls)."""
    meta = {"task": task, "K": rounded(K), "bbox": bbox, "has": has_flags(has), "subject": subject,
            "body_model": body_model, **(record or {})}
    return pack_labelled(key, torch.from_numpy(np.array(crop)), meta, arrays, files)


# A colour per DensePose part (index 0: background), spread over the hue circle.
_PART_COLOURS = [(0, 0, 0)] + [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(part / NUM_PARTS, 0.8, 1.0))
                               for part in range(NUM_PARTS)]


def draw_labelled(sample: dict, classes: list[str] | None = None) -> Image.Image:
    """A labelled sample with its labels: DensePose points coloured by part (background darkened), 3D
    keypoints projected with the crop's K (blue, under) and 2D keypoints (red: they must coincide),
    the gesture's class name."""
    image = Image.open(io.BytesIO(sample[IMAGE_KEY])).convert("RGB")
    meta = labelled_meta(sample)
    parts = None
    if IUV_KEY in sample:
        parts = np.asarray(Image.open(io.BytesIO(sample[IUV_KEY])).convert("RGB"))[..., 0]
        pixels = np.array(image)
        pixels[parts == 0] //= 3
        image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    if parts is not None:
        for y, x in zip(*np.nonzero((parts > 0) & (parts <= NUM_PARTS))):
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=_PART_COLOURS[parts[y, x]])
    arrays = labelled_arrays(sample) if ARRAYS_KEY in sample else {}
    if "keypoints_3d" in arrays:
        points = arrays["keypoints_3d"][arrays["keypoints_3d"][:, 2] > 1e-6, :3].astype(np.float64)
        projected = points @ np.asarray(meta["K"]).T
        for x, y in projected[:, :2] / projected[:, 2:]:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill="blue")
    for x, y, confidence in arrays.get("keypoints_2d", ()):
        if confidence > 0:
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill="red")
    if CLASS_KEY in sample:
        label = int(sample[CLASS_KEY])
        draw.text((2, 2), classes[label] if classes else str(label), fill="yellow")
    return image


def load_body_model(root: Path, model_type: str, gender: str = "neutral", **kwargs) -> torch.nn.Module:
    """`smplx.create` (axis-angle poses and `transl`) on the file `body.model.model_file`
    finds: npz first, then the official pkl; when there is none, or it is an unconverted official
    pickle, the error says where to get one or how to convert it."""
    import smplx  # only converters that pose a body model need it
    from smplx.utils import Struct

    from body.model import model_file, official_pickle_hint

    path = model_file(model_type, root, gender)
    if model_type == "smpl" and path.suffix == ".npz":  # smplx's SMPL reads only pickles: hand it the arrays
        kwargs["data_struct"] = Struct(**np.load(path, allow_pickle=False))
    with official_pickle_hint(path, root):
        return smplx.create(str(root), model_type=model_type, gender=gender, ext=path.suffix[1:], **kwargs)


@cache
def cached_body_model(root: str, model_type: str, gender: str = "neutral", **kwargs) -> torch.nn.Module:
    """One model per worker process and gender (encoders run once per sample)."""
    return load_body_model(Path(root), model_type, gender, **kwargs)
