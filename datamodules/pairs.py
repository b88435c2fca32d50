"""Image pairs for completion pretraining, drawn on the fly from groups of frames.

A pair shard sample is a group: frames of one person from several cameras and times
(``datamodules.format.GroupRecord``). Each time a group is read, a fresh pair is drawn: a cross-view pair
(same time, two cameras) or a cross-pose pair (same camera, two times), so every epoch sees new
pairs from the same shards.

``single_image=True`` turns the pairs into single-image masked autoencoding (MAE), the baseline
of the pretraining study: image 2 is a blank image. "Image 2 = image 1" would hand the decoder the
hidden patches through its cross-attention, a copying task; a blank image 2 keeps the network,
its FLOPs and the image-1 distribution identical to the pair arms while carrying no information.
"""

import math
import random
import zlib
from functools import partial

import numpy as np
import torch
from torch import Tensor

from datamodules.base import ShardDataModule
from datamodules.color import draw_jitter, jitter_or_defer
from datamodules.decode import (
    decode,
    decode_crop,
    decode_warp,
    image_size,
    random_box,
    resized_crop,
    to_tensor,
    warp_pixels,
)
from datamodules.format import (
    CROSS_POSE,
    CROSS_VIEW,
    SINGLE_IMAGE,
    FrameRecord,
    PairItem,
    TarSample,
    crop_affine,
    read_group,
)


def candidate_pairs(frames: list[FrameRecord],
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


def choose_pair(frames: list[FrameRecord], rng: random.Random, cross_view_ratio: float,
                time_gap: tuple[int, int]) -> tuple[int, int, int]:
    """Pick (i, j, pair_type); falls back to the other type when the group has none of the drawn one."""
    cross_view, cross_pose = candidate_pairs(frames, time_gap)
    if not cross_view and not cross_pose:
        raise ValueError(f"group has no cross-view or cross-pose pair ({len(frames)} frames)")
    want_view = rng.random() < cross_view_ratio
    if (want_view and cross_view) or not cross_pose:
        return (*rng.choice(cross_view), CROSS_VIEW)
    return (*rng.choice(cross_pose), CROSS_POSE)


def person_mask(sample: TarSample, frame: FrameRecord, size: tuple[int, int]) -> np.ndarray:
    """The frame's silhouette as (H, W) uint8 0/1; its filled bounding box when the dataset has no
    silhouettes; else all ones. ``size`` is the frame's (width, height).

    A silhouette named in group.json but absent from the tar raises KeyError: a counted skip, not
    a silent switch to the box.
    """
    if frame.get("mask"):
        return (decode(sample[frame["mask"]], channels=1) > 127).astype(np.uint8)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    if frame.get("bbox"):
        x, y, w, h = (int(round(v)) for v in frame["bbox"])
        mask[max(y, 0):y + h, max(x, 0):x + w] = 1
    else:
        mask[:] = 1
    return mask


def person_box(sample: TarSample, frame: FrameRecord, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the person in a frame of ``size`` (width, height): its ``bbox``, else the
    silhouette's bounds, else the whole frame."""
    if frame.get("bbox"):
        return tuple(float(v) for v in frame["bbox"])
    if frame.get("mask"):
        rows, cols = np.nonzero(person_mask(sample, frame, size))
        if len(rows):
            left, top = float(cols.min()), float(rows.min())
            return left, top, float(cols.max()) + 1 - left, float(rows.max()) + 1 - top
    return 0.0, 0.0, float(size[0]), float(size[1])


PERSON_SCALE = (0.8, 1.25)  # person crops: side times a log-uniform factor in this range when augmenting
PERSON_SHIFT = 0.1  # and the centre moved by up to this fraction of the side, along each axis


class PairSampler:
    """Turns one group sample into a training pair, decoding only the two chosen frames (a map stage).

    Each image is decoded straight to its crop (``datamodules.decode``) and handed over as uint8;
    the colour jitter's parameters are drawn here and the jitter runs here (``jitter_on_device=False``)
    or after the transfer (``ShardDataModule.on_after_batch_transfer``). The person mask gets the
    image's crop box, resized nearest-neighbour, so it stays on the pixels it covers.
    """

    def __init__(self, image_size: int, cross_view_ratio: float, time_gap: tuple[int, int], augment: bool,
                 independent_augmentation: bool, crop_scale: tuple[float, float], color_jitter: float,
                 deterministic: bool, single_image: bool = False, jitter_on_device: bool = False,
                 person_crop: float | None = None) -> None:
        self.image_size = image_size
        self.cross_view_ratio = cross_view_ratio
        self.single_image = single_image
        self.time_gap = time_gap
        self.augment = augment
        self.independent_augmentation = independent_augmentation
        self.crop_scale = crop_scale
        self.color_jitter = color_jitter
        self.deterministic = deterministic
        self.jitter_on_device = jitter_on_device
        self.person_crop = person_crop

    def draw(self, width: int, height: int) -> tuple[tuple, Tensor | None]:
        """The framing and the colour jitter's parameters (none without augmentation). The framing is a crop
        box, or with ``person_crop`` the (scale, x shift, y shift) of the square around the person."""
        jitter = draw_jitter(self.color_jitter, self.color_jitter / 4) if self.augment else None
        if self.person_crop is None:
            return (random_box(width, height, self.crop_scale) if self.augment else (0, 0, height, width)), jitter
        if not self.augment:
            return (1.0, 0.0, 0.0), None
        low, high = (math.log(v) for v in PERSON_SCALE)
        return (math.exp(random.uniform(low, high)), *(random.uniform(-PERSON_SHIFT, PERSON_SHIFT) for _ in "xy")), jitter

    def person_affine(self, sample: TarSample, frame: FrameRecord, size: tuple[int, int], framing: tuple) -> Tensor:
        """Source pixels -> the square of ``person_crop`` times the person's longer side, as ``framing`` moves it."""
        scale, shift_x, shift_y = framing
        x, y, w, h = person_box(sample, frame, size)
        side = self.person_crop * max(w, h) * scale
        left, top = x + w / 2 - side / 2 + shift_x * side, y + h / 2 - side / 2 + shift_y * side
        return crop_affine((top, left, side, side), self.image_size)

    def view(self, sample: TarSample, frame: FrameRecord, augmentation: tuple[tuple, Tensor | None] | None,
             with_mask: bool) -> tuple[dict[str, Tensor], tuple[tuple, Tensor | None]]:
        """One frame as uint8 ``image`` (3, S, S) (+ ``image_jitter`` parameters, + ``person`` (S, S) bool), and the
        augmentation it got (reused for the second image when both share one)."""
        data = sample[frame["name"]]
        width, height = image_size(data)
        if augmentation is None:
            augmentation = self.draw(width, height)
        framing, jitter = augmentation
        if self.person_crop is None:
            pixels, box = decode_crop(data, framing, self.image_size)
            cut = partial(resized_crop, box=box, size=self.image_size, nearest=True)
        else:  # the square may reach past the frame: black there, as in the mesh crops
            affine = self.person_affine(sample, frame, (width, height), framing)
            pixels = decode_warp(data, affine, self.image_size)
            cut = partial(warp_pixels, affine=affine, size=self.image_size, nearest=True)
        out = {}
        if jitter is not None:
            pixels = jitter_or_defer(pixels, jitter, self.jitter_on_device, out, "image")
        out["image"] = to_tensor(pixels)
        if with_mask:
            out["person"] = to_tensor(cut(person_mask(sample, frame, (width, height)))).bool()
        return out, augmentation

    def __call__(self, sample: TarSample) -> PairItem:
        group = read_group(sample)
        # Evaluation draws the same pair of a group every time, so its loss is comparable across epochs.
        rng = random.Random(zlib.crc32(sample["__key__"].encode())) if self.deterministic else random
        i, j, pair_type = choose_pair(group["frames"], rng, self.cross_view_ratio, self.time_gap)
        first, augmentation = self.view(sample, group["frames"][i], None, with_mask=True)
        second, _ = self.view(sample, group["frames"][j], None if self.independent_augmentation else augmentation,
                              with_mask=False)
        if self.single_image:  # MAE: image 1 is drawn as in the pair arms, image 2 tells nothing about it
            second["image"], pair_type = torch.zeros_like(second["image"]), SINGLE_IMAGE  # black under any jitter
        out = {"image1": first["image"], "image2": second["image"], "person1": first["person"],
               "pair_type": torch.tensor(pair_type), "key": sample["__key__"]}
        for name, view in (("image1", first), ("image2", second)):
            if "image_jitter" in view:
                out[f"{name}_jitter"] = view["image_jitter"]
        return out


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
        augment_on: where the colour jitter runs: ``worker`` (OpenCV on uint8 pixels, the default: it
            keeps the accelerator free and costs ~0.3 ms a 224 px image) or ``device`` (batched on
            the batch's device after the transfer, for nodes with few CPU cores per GPU). Crops are
            always cut in the workers, where the reduced-size JPEG decode pays.
        person_crop: frame the person instead of cropping the frame at random: a square this many times
            the person box's longer side (its ``bbox``, else the silhouette's bounds), centred on it, as
            human-centric datasets frame people; when augmenting, its side varies by a log-uniform
            factor in ``PERSON_SCALE`` and its centre by ``PERSON_SHIFT`` of the side (``crop_scale`` is
            then unused). Validation uses the exact square.
    """

    image_keys = ("image1", "image2")

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
        augment_on: str = "worker",
        person_crop: float | None = None,
    ) -> None:
        super().__init__(batch_size, augment_on)
        self.save_hyperparameters()

    def _sampler(self, train: bool) -> PairSampler:
        hp = self.hparams
        return PairSampler(hp.image_size, hp.cross_view_ratio, tuple(hp.time_gap), augment=train and hp.augment,
                           independent_augmentation=hp.independent_augmentation, crop_scale=hp.crop_scale,
                           color_jitter=hp.color_jitter, deterministic=not train, single_image=hp.single_image,
                           jitter_on_device=self.augment_on == "device", person_crop=hp.person_crop)

    def samples_per_epoch(self) -> int:
        return self.hparams.epoch_pairs
