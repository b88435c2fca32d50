"""Labelled person crops for fine-tuning (schema: shared/design.md, "Labelled shards").

Each task asks only for the labels it trains on (``label_keys``); a sample without one of them is a
counted ``missing_key`` skip. One crop box is drawn per sample and applied to the image and to
every geometric label (2D keypoints, intrinsics, the IUV map), so labels stay aligned with the
pixels. No flips here: flipping keypoints needs the left/right joint map, which belongs to the
mesh task.
"""

import io
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop, v2

from datamodules.base import ShardDataModule
from datamodules.shards import expand_shards
from heads.dense import NUM_PARTS

LABEL_KEYS = ("cls", "json", "npz", "iuv.png")
UNLABELLED = 255  # iuv.png part channel: 0 background, 1..NUM_PARTS DensePose parts, 255 no label
Box = tuple[int, int, int, int]  # top, left, height, width in source pixels


def crop_affine(box: Box, size: int) -> Tensor:
    """The 3x3 map from source pixels to pixels of ``box`` resized to ``size`` x ``size``.

    Pixel centres sit at integer coordinates (OpenCV), hence the half-pixel terms; the same map
    moves 2D keypoints (``A @ p``) and intrinsics (``A @ K``).
    """
    top, left, height, width = box
    sx, sy = size / width, size / height
    return torch.tensor([[sx, 0.0, (0.5 - left) * sx - 0.5], [0.0, sy, (0.5 - top) * sy - 0.5], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def find_manifest(spec: str | list[str]) -> dict:
    """The manifest.json next to the first shards of ``spec`` or one folder up (where the synth tools
    and converters write it), or {} for remote shards and shards without one."""
    first = expand_shards(spec[0] if isinstance(spec, (list, tuple)) else spec)[0]
    if first.startswith("pipe:") or "://" in first:
        return {}
    for folder in Path(first).parent, Path(first).parent.parent:
        if (folder / "manifest.json").is_file():
            return json.loads((folder / "manifest.json").read_text())
    return {}


def manifest_classes(spec: str | list[str]) -> list[str] | None:
    """``classes`` of the manifests of every source in ``spec``; sources that disagree are an error."""
    entries = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    found = [(entry, find_manifest(entry).get("classes")) for entry in entries]
    distinct = {tuple(classes) for _, classes in found if classes}
    if len(distinct) > 1:
        raise ValueError(f"the shard sources' manifests disagree on the class list: {found}; give the "
                         f"DataModule's `classes` argument explicitly")
    return list(distinct.pop()) if distinct else None


class LabelledSample:
    """One raw tar sample -> tensors for the requested label keys (a map stage).

    Output: ``image`` (3, S, S) float in [0, 1] and ``key`` always; ``label`` (class id) for
    ``cls``; ``K`` (crop intrinsics) and ``has`` (label flags) for ``json``; every array of the
    ``npz`` under its own name (``keypoints_2d`` moved with the crop); ``iuv`` (3, S, S) uint8
    for ``iuv.png`` (nearest-neighbour resampling, so part indices stay part indices).
    """

    def __init__(self, label_keys: tuple[str, ...], image_size: int, augment: bool, crop_scale: tuple[float, float],
                 color_jitter: float, num_classes: int | None) -> None:
        self.label_keys = label_keys
        self.image_size = image_size
        self.augment = augment
        self.crop_scale = list(crop_scale)
        self.num_classes = num_classes
        self.jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4)

    def crop_box(self, image: Tensor) -> Box:
        if self.augment:
            return tuple(RandomResizedCrop.get_params(image, self.crop_scale, [3 / 4, 4 / 3]))
        return 0, 0, image.shape[-2], image.shape[-1]

    def resized_crop(self, item: tv_tensors.TVTensor, box: Box) -> Tensor:
        return v2.functional.resized_crop(item, *box, [self.image_size, self.image_size], antialias=True)

    def label(self, sample: dict) -> Tensor:
        label = int(sample["cls"])
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__', '?')}: class id {label} is outside "
                             f"the {self.num_classes} classes of the DataModule (manifest.json or `classes`)")
        return torch.tensor(label)

    def __call__(self, sample: dict) -> dict:
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
        box = self.crop_box(image)
        image = self.resized_crop(image, box)
        if self.augment:
            image = self.jitter(image)
        out = {"image": v2.functional.to_dtype(image, torch.float32, scale=True).as_subclass(Tensor),
               "key": sample["__key__"]}
        affine = crop_affine(box, self.image_size)
        if "cls" in self.label_keys:
            out["label"] = self.label(sample)
        if "json" in self.label_keys:
            meta = json.loads(sample["json"])
            out["K"] = (affine @ torch.tensor(meta["K"], dtype=torch.float64)).float()
            out["has"] = {name: torch.tensor(bool(flag)) for name, flag in meta["has"].items()}
        if "npz" in self.label_keys:
            with np.load(io.BytesIO(sample["npz"]), allow_pickle=False) as arrays:
                out |= {name: torch.from_numpy(arrays[name]).float() for name in arrays.files}
            if "keypoints_2d" in out:
                points = out["keypoints_2d"].double()
                points[:, :2] = points[:, :2] @ affine[:2, :2].T + affine[:2, 2]
                out["keypoints_2d"] = points.float()
        if "iuv.png" in self.label_keys:
            out["iuv"] = self.resized_crop(self.iuv(sample), box).as_subclass(Tensor)
        return out

    @staticmethod
    def iuv(sample: dict) -> tv_tensors.Mask:
        """The (3, H, W) IUV map, refusing part ids that are neither a DensePose part nor unlabelled (a
        bad sample, counted): a loss that ignored them would lose those pixels' labels silently."""
        iuv = v2.functional.pil_to_tensor(Image.open(io.BytesIO(sample["iuv.png"])).convert("RGB"))
        parts = iuv[0]
        bad = (parts > NUM_PARTS) & (parts != UNLABELLED)
        if bad.any():
            raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__', '?')}: iuv.png has part ids "
                             f"{parts[bad].unique().tolist()}; DensePose parts are 1..{NUM_PARTS}, 0 is "
                             f"background and {UNLABELLED} unlabelled")
        return tv_tensors.Mask(iuv)


class LabelledDataModule(ShardDataModule):
    """Labelled crops from WebDataset shards, for the fine-tuning tasks.

    Args:
        train_shards: directory, brace pattern, ``pipe:`` URL or list of them.
        train_weights: mix the entries of ``train_shards`` as separate sources with these weights.
        val_shards: same, for validation (optional; one pass, not resampled).
        test_shards: same, for ``test`` / ``predict`` (defaults to ``val_shards``).
        label_keys: the labels the task needs, from ``cls``, ``json``, ``npz``, ``iuv.png`` (the
            ``jpg`` is always read); a sample missing one is skipped and counted.
        classes: class names in label order; default: ``classes`` of the manifest.json in the
            train shards' folder or the folder above.
        batch_size: samples per device per step.
        num_workers: loader processes per device.
        image_size: side of the square crops fed to the model.
        epoch_samples: samples per training epoch over all ranks (resampled stream, so it is a choice).
        shuffle_buffer: samples held in each worker's shuffle buffer.
        augment: random resized crops and colour jitter on training samples.
        crop_scale: area range of the random crops.
        color_jitter: strength of brightness/contrast/saturation jitter (hue gets a quarter).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        train_weights: list[float] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        label_keys: tuple[str, ...] = ("json",),
        classes: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 224,
        epoch_samples: int = 100_000,
        shuffle_buffer: int = 1000,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        color_jitter: float = 0.4,
    ) -> None:
        super().__init__(batch_size)
        unknown = set(label_keys) - set(LABEL_KEYS)
        if unknown:
            raise ValueError(f"unknown label keys {sorted(unknown)}; labelled shards have {list(LABEL_KEYS)}")
        self.save_hyperparameters()

    @cached_property
    def classes(self) -> list[str] | None:
        """Class names in label order, or None when neither the argument nor a manifest gives them."""
        if self.hparams.classes is not None:
            return list(self.hparams.classes)
        return manifest_classes(self.hparams.train_shards)

    def _sampler(self, train: bool) -> LabelledSample:
        hp = self.hparams
        num_classes = len(self.classes) if "cls" in hp.label_keys and self.classes else None
        return LabelledSample(tuple(hp.label_keys), hp.image_size, augment=train and hp.augment,
                              crop_scale=hp.crop_scale, color_jitter=hp.color_jitter, num_classes=num_classes)

    def samples_per_epoch(self) -> int:
        return self.hparams.epoch_samples
