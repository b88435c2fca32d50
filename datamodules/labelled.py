"""Labelled person crops for fine-tuning (the shard format: ``datamodules.format``).

Each task asks only for the labels it trains on (``label_keys``); a sample without one of them is a
counted ``missing_key`` skip. One crop box is drawn per sample and applied to the image and to
every geometric label (2D keypoints, intrinsics, the IUV map), so labels stay aligned with the
pixels. No flips here: flipping keypoints needs the left/right joint map, which belongs to the
mesh task.
"""

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from body.layouts import NUM_PARTS
from datamodules.base import ShardDataModule
from datamodules.color import jittered
from datamodules.decode import decode, decode_crop, image_size, random_box, resized_crop, to_tensor
from datamodules.format import (
    ARRAYS_KEY,
    CLASS_KEY,
    IMAGE_KEY,
    IUV_KEY,
    LABEL_KEYS,
    MANIFEST,
    META_KEY,
    UNLABELLED,
    LabelledItem,
    TarSample,
    crop_affine,
    labelled_arrays,
    labelled_meta,
    map_points,
)
from datamodules.shards import expand_shards


def find_manifest(spec: str | list[str]) -> dict:
    """The manifest.json next to the first shards of ``spec`` or one folder up (where the synth tools
    and converters write it), or {} for remote shards and shards without one."""
    first = expand_shards(spec[0] if isinstance(spec, (list, tuple)) else spec)[0]
    if first.startswith("pipe:") or "://" in first:
        return {}
    for folder in Path(first).parent, Path(first).parent.parent:
        if (folder / MANIFEST).is_file():
            return json.loads((folder / MANIFEST).read_text())
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
    """One raw tar sample -> tensors for the requested label keys (a map stage): a ``LabelledItem``.

    One crop box moves the image, ``K``, ``keypoints_2d`` and the IUV map (nearest-neighbour resampling, so
    part indices stay part indices). With ``jitter_on_device``, ``image_jitter`` carries the colour jitter's
    parameters instead of the jitter being applied here.
    """

    def __init__(self, label_keys: tuple[str, ...], image_size: int, augment: bool, crop_scale: tuple[float, float],
                 color_jitter: float, num_classes: int | None, jitter_on_device: bool = False) -> None:
        self.label_keys = label_keys
        self.image_size = image_size
        self.augment = augment
        self.crop_scale = tuple(crop_scale)
        self.num_classes = num_classes
        self.color_jitter = color_jitter
        self.jitter_on_device = jitter_on_device

    def label(self, sample: TarSample) -> Tensor:
        label = int(sample[CLASS_KEY])
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__', '?')}: class id {label} is outside "
                             f"the {self.num_classes} classes of the DataModule (manifest.json or `classes`)")
        return torch.tensor(label)

    def __call__(self, sample: TarSample) -> LabelledItem:
        width, height = image_size(sample[IMAGE_KEY])
        box = random_box(width, height, self.crop_scale) if self.augment else (0, 0, height, width)
        pixels, box = decode_crop(sample[IMAGE_KEY], box, self.image_size)
        out: LabelledItem = {"key": sample["__key__"]}
        if self.augment:
            pixels = jittered(pixels, self.color_jitter, self.jitter_on_device, out, "image")
        out["image"] = to_tensor(pixels)
        affine = crop_affine(box, self.image_size)
        if CLASS_KEY in self.label_keys:
            out["label"] = self.label(sample)
        if META_KEY in self.label_keys:
            meta = labelled_meta(sample)
            out["K"] = (affine @ torch.tensor(meta["K"], dtype=torch.float64)).float()
            out["has"] = {name: torch.tensor(bool(flag)) for name, flag in meta["has"].items()}
        if ARRAYS_KEY in self.label_keys:
            out |= {name: torch.from_numpy(array).float() for name, array in labelled_arrays(sample).items()}
            if "keypoints_2d" in out:
                points = out["keypoints_2d"].double()
                points[:, :2] = map_points(affine, points[:, :2])
                out["keypoints_2d"] = points.float()
        if IUV_KEY in self.label_keys:
            out["iuv"] = to_tensor(resized_crop(self.iuv(sample), box, self.image_size, nearest=True))
        return out

    @staticmethod
    def iuv(sample: TarSample) -> np.ndarray:
        """The (H, W, 3) IUV map, refusing part ids that are neither a DensePose part nor unlabelled (a
        bad sample, counted): a loss that ignored them would lose those pixels' labels silently."""
        iuv = decode(sample[IUV_KEY])
        parts = iuv[..., 0]
        bad = (parts > NUM_PARTS) & (parts != UNLABELLED)
        if bad.any():
            raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__', '?')}: iuv.png has part ids "
                             f"{np.unique(parts[bad]).tolist()}; DensePose parts are 1..{NUM_PARTS}, 0 is "
                             f"background and {UNLABELLED} unlabelled")
        return iuv


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
        augment_on: where the colour jitter runs, ``worker`` or ``device`` (see ``PairDataModule``).
    """

    image_keys = ("image",)

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
        augment_on: str = "worker",
    ) -> None:
        super().__init__(batch_size, augment_on)
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
        num_classes = len(self.classes) if CLASS_KEY in hp.label_keys and self.classes else None
        return LabelledSample(tuple(hp.label_keys), hp.image_size, augment=train and hp.augment,
                              crop_scale=hp.crop_scale, color_jitter=hp.color_jitter, num_classes=num_classes,
                              jitter_on_device=self.augment_on == "device")

    def samples_per_epoch(self) -> int:
        return self.hparams.epoch_samples
