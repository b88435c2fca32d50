"""Image pairs for completion pretraining, drawn on the fly from groups of frames.

A pair shard sample is a group: frames of one person from several cameras and times
(``shared/design.md``). Each time a group is read, a fresh pair is drawn: a cross-view pair
(same time, two cameras) or a cross-pose pair (same camera, two times), so every epoch sees new
pairs from the same shards.

``single_image=True`` turns the pairs into single-image masked autoencoding (MAE), the baseline
of the pretraining study: image 2 is a blank image. "Image 2 = image 1" would hand the decoder the
hidden patches through its cross-attention, a copying task; a blank image 2 keeps the network,
its FLOPs and the image-1 distribution identical to the pair arms while carrying no information.
"""

import io
import json
import random
import zlib

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from datamodules.base import ShardDataModule

CROSS_VIEW, CROSS_POSE, SINGLE_IMAGE = 0, 1, 2  # pair_type values (lightning_modules.PAIR_TYPES names them)


def candidate_pairs(frames: list[dict],
                    time_gap: tuple[int, int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All ordered (i, j) cross-view pairs and cross-pose pairs (time gap within ``time_gap``) of a group."""
    cross_view, cross_pose = [], []
    for i, a in enumerate(frames):
        for j, b in enumerate(frames):
            if i == j:
                continue
            if a["time"] == b["time"] and a["camera"] != b["camera"]:
                cross_view.append((i, j))
            elif a["camera"] == b["camera"] and time_gap[0] <= abs(a["time"] - b["time"]) <= time_gap[1]:
                cross_pose.append((i, j))
    return cross_view, cross_pose


def choose_pair(frames: list[dict], rng: random.Random, cross_view_ratio: float,
                time_gap: tuple[int, int]) -> tuple[int, int, int]:
    """Pick (i, j, pair_type); falls back to the other type when the group has none of the drawn one."""
    cross_view, cross_pose = candidate_pairs(frames, time_gap)
    if not cross_view and not cross_pose:
        raise ValueError(f"group has no cross-view or cross-pose pair ({len(frames)} frames)")
    want_view = rng.random() < cross_view_ratio
    if (want_view and cross_view) or not cross_pose:
        return (*rng.choice(cross_view), CROSS_VIEW)
    return (*rng.choice(cross_pose), CROSS_POSE)


def person_mask(sample: dict, frame: dict, size: tuple[int, int]) -> Tensor:
    """The frame's silhouette; its filled bounding box when the dataset has no silhouettes; else all ones.

    A silhouette named in group.json but absent from the tar raises KeyError: a counted skip, not
    a silent switch to the box.
    """
    if frame.get("mask"):
        return torch.from_numpy(np.array(Image.open(io.BytesIO(sample[frame["mask"]])).convert("L")) > 127)
    mask = torch.zeros(size[1], size[0], dtype=torch.bool)
    if frame.get("bbox"):
        x, y, w, h = (int(round(v)) for v in frame["bbox"])
        mask[max(y, 0):y + h, max(x, 0):x + w] = True
    else:
        mask[:] = True
    return mask


class PairSampler:
    """Turns one group sample into a training pair, decoding only the two chosen frames (a map stage)."""

    def __init__(self, image_size: int, cross_view_ratio: float, time_gap: tuple[int, int], augment: bool,
                 independent_augmentation: bool, crop_scale: tuple[float, float], color_jitter: float,
                 deterministic: bool, single_image: bool = False) -> None:
        self.cross_view_ratio = cross_view_ratio
        self.single_image = single_image
        self.time_gap = time_gap
        self.independent_augmentation = independent_augmentation
        self.deterministic = deterministic
        geometry = (v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True) if augment
                    else v2.Resize((image_size, image_size), antialias=True))
        photometric = [v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4)] if augment else []
        self.transform = v2.Compose([geometry, *photometric, v2.ToDtype({tv_tensors.Image: torch.float32,
                                                                          "others": None}, scale=True)])

    @staticmethod
    def load(sample: dict, frame: dict) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image = Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB")
        mask = person_mask(sample, frame, image.size)
        return tv_tensors.Image(v2.functional.pil_to_tensor(image)), tv_tensors.Mask(mask)

    def __call__(self, sample: dict) -> dict[str, Tensor]:
        group = json.loads(sample["group.json"])
        # Evaluation draws the same pair of a group every time, so its loss is comparable across epochs.
        rng = random.Random(zlib.crc32(sample["__key__"].encode())) if self.deterministic else random
        i, j, pair_type = choose_pair(group["frames"], rng, self.cross_view_ratio, self.time_gap)
        (image1, person1), (image2, _) = self.load(sample, group["frames"][i]), self.load(sample, group["frames"][j])
        if self.independent_augmentation:
            image1, person1 = self.transform(image1, person1)
            image2 = self.transform(image2)
        else:  # one call draws one set of random parameters for everything passed
            image1, person1, image2 = self.transform(image1, person1, image2)
        if self.single_image:  # MAE: image 1 is drawn as in the pair arms, image 2 tells nothing about it
            image2, pair_type = torch.zeros_like(image2), SINGLE_IMAGE
        return {"image1": image1.as_subclass(Tensor), "image2": image2.as_subclass(Tensor),
                "person1": person1.as_subclass(Tensor).float(), "pair_type": torch.tensor(pair_type),
                "key": sample["__key__"]}


class PairDataModule(ShardDataModule):
    """Pretraining pairs from WebDataset pair shards.

    Args:
        train_shards: directory, brace pattern, ``pipe:`` URL or list of them.
        train_weights: mix the entries of ``train_shards`` as separate sources, drawn with these
            relative weights (e.g. ``[1, 2]``: synthetic once for every two real pairs).
        val_shards: same, for validation (optional).
        test_shards: same, for ``test`` / ``predict`` (defaults to ``val_shards``).
        batch_size: pairs per device per step.
        num_workers: loader processes per device.
        image_size: side of the square crops fed to the model.
        cross_view_ratio: share of cross-view pairs (1 = cross-view only, 0 = cross-pose only).
        time_gap: smallest and largest time-index gap of a cross-pose pair.
        epoch_pairs: pairs per training epoch over all ranks (resampled stream, so it is a choice).
        shuffle_buffer: groups held in each worker's shuffle buffer.
        augment: random resized crops and colour jitter.
        independent_augmentation: draw the augmentation separately for each image of a pair (CroCo's
            recipe) rather than once for both.
        crop_scale: area range of the random crops.
        color_jitter: strength of brightness/contrast/saturation jitter (hue gets a quarter).
        single_image: masked autoencoding of image 1 alone (MAE baseline): image 2 is blank, so the
            decoder's cross-attention carries nothing about the hidden patches; the loss is logged
            under the pair type image 1 was drawn with.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        train_weights: list[float] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 224,
        cross_view_ratio: float = 0.5,
        time_gap: tuple[int, int] = (1, 4),
        epoch_pairs: int = 100_000,
        shuffle_buffer: int = 1000,
        augment: bool = True,
        independent_augmentation: bool = True,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        color_jitter: float = 0.4,
        single_image: bool = False,
    ) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()

    def _sampler(self, train: bool) -> PairSampler:
        hp = self.hparams
        return PairSampler(hp.image_size, hp.cross_view_ratio, tuple(hp.time_gap), augment=train and hp.augment,
                           independent_augmentation=hp.independent_augmentation, crop_scale=hp.crop_scale,
                           color_jitter=hp.color_jitter, deterministic=not train, single_image=hp.single_image)

    def samples_per_epoch(self) -> int:
        return self.hparams.epoch_pairs
