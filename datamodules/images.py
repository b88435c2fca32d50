"""Image files for ``crocoman predict``: person crops, or whole photos with person boxes.

Files are read as people see them: EXIF orientation applied (phone photos are stored sideways),
grayscale, 16-bit, palette, CMYK and transparent images made RGB (transparency over grey), and
JPEGs far larger than the crops need decoded at a reduced size (DCT scaling). A file that cannot
be read does not stop the run: its item carries the error, writers skip it and list it at the end.

Person boxes: ``<name>.json`` beside ``<name>.jpg`` holds ``[x, y, w, h]`` in pixels of the upright
image (the video converter's box format; detectors that apply EXIF orientation report them so), or
a list of such boxes. Each box becomes one network input, a square around the box with
``box_margin`` of its longer side added on every side. Without a JSON the whole image is the input,
padded to a square.

Camera: without calibration a photo gets a pinhole camera with focal length ``focal_ratio`` x its
longer side and the principal point at its centre; each input's ``K`` is that camera seen through
the crop, so the meshes of all the people in a photo share one camera frame.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import ShardDataModule
from datamodules.format import crop_affine
from datamodules.workers import worker_context

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TRANSPARENT_BACKGROUND = (128, 128, 128)
_SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class PhotoError(ValueError):
    """An image or its box file that cannot be used, with the reason."""


def image_files(paths: str | list[str]) -> list[tuple[Path, str]]:
    """(file, key) per image named directly or found (recursively, sorted) in a named folder. The key names
    the outputs: the file's path below its folder without suffix, so ``a/img.jpg`` and ``b/img.jpg`` keep
    apart."""
    files: list[tuple[Path, str]] = []
    for entry in [paths] if isinstance(paths, str) else paths:
        path = Path(entry)
        if path.is_dir():
            files += [(file, file.relative_to(path).with_suffix("").as_posix()) for file in sorted(path.rglob("*"))
                      if file.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append((path, path.stem))
        else:
            raise FileNotFoundError(f"no image file or folder at {path} (from {Path.cwd()})")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {paths}")
    return files


def person_boxes(image_path: Path) -> list[tuple[float, float, float, float]] | None:
    """The boxes of ``<name>.json`` beside the image, or None when there is none (the whole image is the input)."""
    path = image_path.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        boxes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PhotoError(f"person boxes {path} unreadable: {error}") from error
    if isinstance(boxes, list) and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        boxes = [boxes]
    checked = []
    for box in boxes if isinstance(boxes, list) else [boxes]:
        valid = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
        if not (valid and all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0):
            raise PhotoError(f"person boxes {path}: {box!r} is not [x, y, w, h] (pixels of the upright image, "
                             f"w and h > 0); the file holds one box or a list of them")
        checked.append(tuple(float(v) for v in box))
    if not checked:
        raise PhotoError(f"person boxes {path} is empty: no person to predict")
    return checked


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: transparency composited over grey, 16-bit grey scaled (not clipped)."""
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        values = values / 257.0 if values.max() > 255 else values
        image = Image.fromarray(values.clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (*TRANSPARENT_BACKGROUND, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def read_photo(path: Path, size: int, side: float | None = None) -> tuple[Image.Image, tuple[int, int], float]:
    """The upright RGB image, its full upright size (W, H) and the scale of the returned pixels to those of
    the full size: 1, or 1/2, 1/4, 1/8 when a JPEG can decode that small and still show ``side`` full-size
    pixels (default: its longer side) on at least ``size`` pixels."""
    try:
        with Image.open(path) as image:
            stored_width = image.size[0]
            full = image.size[::-1] if image.getexif().get(ExifTags.Base.Orientation) in _SIDEWAYS else image.size
            fraction = min(1.0, size / (side or max(full)))
            if fraction < 1:
                image.draft(None, (math.ceil(image.size[0] * fraction), math.ceil(image.size[1] * fraction)))
            image.load()
            scale = 1 / round(stored_width / image.size[0])
            return to_rgb(ImageOps.exif_transpose(image)), full, scale
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise PhotoError(f"{type(error).__name__}: {error}") from error


def nominal_camera(width: int, height: int, focal_ratio: float) -> Tensor:
    """(3, 3) pinhole camera of an uncalibrated image: focal ``focal_ratio`` x the longer side, principal
    point at the centre (pixel centres at integers)."""
    focal = focal_ratio * max(width, height)
    return torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def square_around(box: tuple[float, float, float, float], margin: float) -> tuple[float, float, float]:
    """(left, top, side) of the square around an [x, y, w, h] box, ``margin`` x its longer side added per side."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    return x + (w - side) / 2, y + (h - side) / 2, side


def crop_square(image: Image.Image, scale: float, left: float, top: float, side: float, size: int) -> Tensor:
    """(3, size, size) uint8: the square (full-size pixels; black outside the image) of an image held at
    ``scale`` of its full size, resampled with antialiasing."""
    left, top, side = left * scale, top * scale, side * scale
    region = (math.floor(left), math.floor(top), math.ceil(left + side), math.ceil(top + side))
    within = (left - region[0], top - region[1], left - region[0] + side, top - region[1] + side)
    crop = image.crop(region).resize((size, size), Image.Resampling.BILINEAR, box=within)
    return torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)


class Photos(Dataset):
    """One item per image file: its people as network inputs (see the module docstring).

    An item: ``path``, ``key``, ``error`` ("" when usable), ``photo_K`` (3, 3) the photo's camera,
    ``photo_size`` (W, H) upright, ``boxed`` (whether boxes were given), and per input ``image``
    (n, 3, S, S) uint8, ``K`` (n, 3, 3), ``box`` (n, 4) the square in photo pixels (left, top, side, side)
    and ``valid`` (n,). An unusable file gives one grey, invalid input, so batches are never empty.
    """

    def __init__(self, files: list[tuple[Path, str]], image_size: int, focal_ratio: float,
                 box_margin: float) -> None:
        self.files, self.image_size, self.focal_ratio, self.box_margin = files, image_size, focal_ratio, box_margin

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path, key = self.files[index]
        item = {"path": str(path), "key": key, "error": "", "boxed": False}
        try:
            boxes = person_boxes(path)
            smallest = None if boxes is None else min(square_around(box, self.box_margin)[2] for box in boxes)
            image, (width, height), scale = read_photo(path, self.image_size, smallest)
        except PhotoError as error:
            return item | self._unusable(str(error))
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            return item | self._unusable(f"{type(error).__name__}: {error}")
        squares = ([square_around(box, self.box_margin) for box in boxes] if boxes is not None
                   else [square_around((0.0, 0.0, width, height), 0.0)])
        photo_K = nominal_camera(width, height, self.focal_ratio)
        crops = [crop_square(image, scale, left, top, side, self.image_size) for left, top, side in squares]
        Ks = [(crop_affine((top, left, side, side), self.image_size) @ photo_K).float() for left, top, side in squares]
        return item | {
            "boxed": boxes is not None, "photo_K": photo_K, "photo_size": (width, height), "image": torch.stack(crops),
            "K": torch.stack(Ks), "box": torch.tensor([[left, top, side, side] for left, top, side in squares]),
            "valid": torch.ones(len(squares), dtype=torch.bool),
        }

    def _unusable(self, error: str) -> dict:
        size, K = self.image_size, nominal_camera(self.image_size, self.image_size, self.focal_ratio)
        return {"error": error, "photo_K": K, "photo_size": (size, size),
                "image": torch.full((1, 3, size, size), 128, dtype=torch.uint8), "K": K.float()[None],
                "box": torch.tensor([[0.0, 0.0, size, size]]), "valid": torch.zeros(1, dtype=torch.bool)}


def collate_photos(items: list[dict]) -> dict:
    """Items -> one batch of network inputs (``image``, ``K``, ``box``, ``valid``, ``key``: ``<key>`` for a
    whole image, ``<key>_<i>`` for the i-th boxed person; ``photo``: the index of its item) and the items'
    own fields as lists or stacked tensors (``path``, ``photo_key``, ``error``, ``boxed``, ``photo_K``,
    ``photo_size``)."""
    keys = [f"{item['key']}_{i}" if item["boxed"] else item["key"]
            for item in items for i in range(len(item["image"]))]
    return {
        "image": torch.cat([item["image"] for item in items]),
        "K": torch.cat([item["K"] for item in items]),
        "box": torch.cat([item["box"] for item in items]),
        "valid": torch.cat([item["valid"] for item in items]),
        "key": keys,
        "photo": torch.cat([torch.full((len(item["image"]),), index) for index, item in enumerate(items)]),
        "path": [item["path"] for item in items],
        "photo_key": [item["key"] for item in items],
        "error": [item["error"] for item in items],
        "boxed": [item["boxed"] for item in items],
        "photo_K": torch.stack([item["photo_K"] for item in items]),
        "photo_size": torch.tensor([item["photo_size"] for item in items]),
    }


class ImageFolderDataModule(ShardDataModule):
    """Images to predict on (``crocoman predict``); it has no training or validation data.

    Args:
        paths: image files and/or folders (searched recursively).
        image_size: side of the square network input (the model's training size).
        batch_size: image files per step (a photo with several boxes gives several inputs).
        num_workers: loader processes.
        focal_ratio: assumed focal length as a fraction of the image's longer side.
        box_margin: added around each person box, per side, as a fraction of its longer side.
    """

    image_keys = ("image",)

    def __init__(self, paths: str | list[str], image_size: int = 224, batch_size: int = 16, num_workers: int = 2,
                 focal_ratio: float = 1.0, box_margin: float = 0.2) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = Photos(image_files(hp.paths), hp.image_size, hp.focal_ratio, hp.box_margin)
        return DataLoader(dataset, batch_size=hp.batch_size, num_workers=hp.num_workers, collate_fn=collate_photos,
                          multiprocessing_context=worker_context(hp.num_workers))

    def train_dataloader(self) -> DataLoader:
        raise RuntimeError("ImageFolderDataModule only serves `crocoman predict`; train on shards (MeshDataModule)")

    def val_dataloader(self) -> list:
        return []

    def test_dataloader(self) -> list:
        return []
