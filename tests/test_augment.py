"""The fast pair pipeline keeps today's augmentation: torchvision's crop and jitter distributions, the
same colour operations, person masks on the pixels they cover, in the worker and on the device alike."""

import io
import json
import random

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules import PairDataModule
from datamodules.color import draw_jitter, jitter_batch, jitter_pixels
from datamodules.decode import decode, decode_crop, reduction
from datamodules.health import SKIP_KINDS, SKIPPED_KEY
from datamodules.pairs import PERSON_SCALE, PERSON_SHIFT, person_box
from datamodules.shards import expand_shards

TORCHVISION_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
SIZE = 48


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def group(pair_shards) -> dict:
    return next(iter(wds.WebDataset(expand_shards(str(pair_shards / "val")), shardshuffle=False)))


def frames(sample: dict) -> list[np.ndarray]:
    names = [frame["name"] for frame in json.loads(sample["group.json"])["frames"]]
    return [np.array(Image.open(io.BytesIO(sample[name])).convert("RGB")) for name in names]


def with_frames(sample: dict, pictures: list[bytes], masks: list[bytes] | None = None) -> dict:
    """The group with its frames (and silhouettes) replaced, cycling through ``pictures``."""
    sample = dict(sample)
    for index, frame in enumerate(json.loads(sample["group.json"])["frames"]):
        sample[frame["name"]] = pictures[index % len(pictures)]
        if masks is not None:
            sample[frame["mask"]] = masks[index % len(masks)]
    return sample


def finished_pairs(dm: PairDataModule, sample: dict, count: int, seed: int) -> dict:
    """``count`` training pairs of one group, as the model receives them (after the transfer hook)."""
    sampler = dm._sampler(train=True)
    torch.manual_seed(seed)
    random.seed(seed)  # which frames pair up
    return dm.on_after_batch_transfer(default_collate([sampler(sample) for _ in range(count)]), 0)


def test_both_jitters_equal_torchvision_colour_ops(group):
    """Same parameters: the worker's OpenCV jitter (rounded to uint8) and the device's batched one give
    what torchvision's four ops give in that order."""
    torch.manual_seed(0)
    pictures = frames(group)
    params = torch.stack([draw_jitter(0.4, 0.1) for _ in pictures])
    images = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pictures]).float() / 255
    reference = []
    for image, p in zip(images, params):
        for op in p[4:].int().tolist():
            image = TORCHVISION_OPS[op](image, float(p[op]))
        reference.append(image)
    reference = torch.stack(reference)
    on_device = jitter_batch(images, params)
    in_worker = torch.stack([torch.from_numpy(jitter_pixels(p, q)).permute(2, 0, 1) for p, q in zip(pictures, params)])
    assert (on_device - reference).abs().max() < 1e-3
    worker_error = in_worker.float() / 255 - reference  # rounded to 8 bits after each op, as torchvision's uint8 path
    assert worker_error.abs().max() <= 4 / 255 and worker_error.abs().mean() < 0.5 / 255
    assert worker_error.mean().abs() < 0.1 / 255  # no drift (torchvision's own uint8 path truncates)
    assert (reference - images).abs().mean() > 0.02  # the jitter did change the pictures


def test_jitter_parameters_follow_torchvision_ranges():
    torch.manual_seed(0)
    params = torch.stack([draw_jitter(0.4, 0.1) for _ in range(4000)])
    for op in range(3):
        assert 0.6 <= params[:, op].min() < 0.62 and 1.38 < params[:, op].max() <= 1.4
        assert params[:, op].mean() == pytest.approx(1.0, abs=0.02)
    assert -0.1 <= params[:, 3].min() < -0.098 and 0.098 < params[:, 3].max() <= 0.1
    order = params[:, 4:].long()
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # a permutation of the four ops
    share = torch.stack([(order == op).float().mean(0) for op in range(4)])  # op x position
    assert torch.allclose(share, torch.full((4, 4), 0.25), atol=0.03)


def today_view(pixels: np.ndarray, crop_scale, color_jitter: float) -> torch.Tensor:
    """The per-sample path this pipeline replaced: torchvision crop then jitter on a uint8 tensor."""
    transform = v2.Compose([v2.RandomResizedCrop(SIZE, scale=crop_scale, antialias=True),
                            v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4),
                            v2.ToDtype(torch.float32, scale=True)])
    return transform(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())


def crop_fraction(images: torch.Tensor) -> torch.Tensor:
    """Share of the source's area each crop of a coordinate picture (red = x, green = y) shows."""
    width = images[:, 0, :, -1].mean(1) - images[:, 0, :, 0].mean(1)
    height = images[:, 1, -1, :].mean(1) - images[:, 1, 0, :].mean(1)
    return width * height


def colour_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per image: brightness, contrast (grey std) and saturation (max - min over channels)."""
    grey = images.mean(1)
    return torch.stack([grey.mean((1, 2)), grey.std((1, 2)), (images.amax(1) - images.amin(1)).mean((1, 2))], 1)


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_crop_and_jitter_statistics_match_the_torchvision_path(group, augment_on):
    count = 300
    x, y = np.meshgrid(np.linspace(0, 255, 96), np.linspace(0, 255, 80))
    coordinates = np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)
    plain = PairDataModule("unused", image_size=SIZE, color_jitter=0.0, augment_on=augment_on)
    ours = finished_pairs(plain, with_frames(group, [png(coordinates)]), count, seed=1)["image1"]
    torch.manual_seed(2)
    theirs = torch.stack([today_view(coordinates, (0.6, 1.0), 0.0) for _ in range(count)])
    ours_area, theirs_area = crop_fraction(ours), crop_fraction(theirs)
    assert 0.55 < ours_area.min() and ours_area.max() < 1.02
    assert float(ours_area.mean()) == pytest.approx(float(theirs_area.mean()), abs=0.02)
    for q in (0.1, 0.5, 0.9):
        assert float(torch.quantile(ours_area, q)) == pytest.approx(float(torch.quantile(theirs_area, q)), abs=0.03)
    assert float(ours_area.std()) == pytest.approx(float(theirs_area.std()), rel=0.2)

    pictures = frames(group)
    jittered = PairDataModule("unused", image_size=SIZE, augment_on=augment_on)
    ours = colour_statistics(finished_pairs(jittered, group, count, seed=3)["image1"])
    torch.manual_seed(4)
    # image 1 of a pair is any frame of the group: draw the frames for today's path the same way
    picks = torch.randint(len(pictures), (count,)).tolist()
    theirs = colour_statistics(torch.stack([today_view(pictures[i], (0.6, 1.0), 0.4) for i in picks]))
    assert torch.allclose(ours.mean(0), theirs.mean(0), atol=0.02, rtol=0.05)
    assert torch.allclose(ours.std(0), theirs.std(0), rtol=0.2)


def centroids(weights: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of mass of each (H, W) weight map of a batch, in pixels."""
    rows, cols = torch.meshgrid(torch.arange(weights.shape[1]), torch.arange(weights.shape[2]), indexing="ij")
    weights = weights.float()
    total = weights.sum((1, 2))
    return torch.stack([(weights * cols).sum((1, 2)) / total, (weights * rows).sum((1, 2)) / total], 1)


@pytest.mark.parametrize(("augment_on", "person_crop"), [("worker", None), ("device", None), ("worker", 1.3)])
def test_person_masks_stay_on_their_pixels(group, augment_on, person_crop):
    """Frames whose picture is their own silhouette: after crops and jitter, the picture's bright mass sits
    where the mask is. Offsets average out to zero (a mask one pixel off would average one pixel);
    single crops scatter by a few tenths of a pixel, the nearest-neighbour sampling of thin limbs."""
    names = json.loads(group["group.json"])["frames"]
    silhouettes = [np.asarray(Image.open(io.BytesIO(group[f["mask"]])).convert("L")) for f in names]
    pictures = [png(np.repeat(s[..., None], 3, -1)) for s in silhouettes]
    dm = PairDataModule("unused", image_size=SIZE, crop_scale=(0.3, 1.0), augment_on=augment_on,
                        person_crop=person_crop)
    batch = finished_pairs(dm, with_frames(group, pictures), 200, seed=0)
    grey, person = batch["image1"].mean(1), batch["person1"]
    assert person.any((1, 2)).all()
    background = (grey * ~person).sum((1, 2)) / (~person).sum((1, 2))  # the jitter lifts black a little
    offsets = centroids((grey - background.view(-1, 1, 1)).clamp_min(0)) - centroids(person)
    assert offsets.mean(0).abs().max() < 0.15
    assert offsets.norm(dim=1).mean() < 0.6


def test_device_and_worker_jitter_give_the_same_batches(group):
    """The two modes draw the same crops and parameters from the same generator; only where the jitter runs differs."""
    worker = finished_pairs(PairDataModule("unused", image_size=SIZE, augment_on="worker"), group, 8, seed=5)
    device = finished_pairs(PairDataModule("unused", image_size=SIZE, augment_on="device"), group, 8, seed=5)
    for key in ("image1", "image2"):  # the worker rounds to 8 bits after each op
        assert (worker[key] - device[key]).abs().max() <= 4 / 255 and (worker[key] - device[key]).abs().mean() < 0.5 / 255
    assert torch.equal(worker["person1"], device["person1"])


def test_large_stored_images_decode_reduced_with_the_same_content():
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (512, 384), interpolation=cv2.INTER_CUBIC)
    data = jpeg(base)
    box = (40, 60, 300, 400)  # 300 px tall: shrinking to 64 allows a 1/4 decode
    assert reduction(box, 64) == 4 and reduction(box, 160) == 1
    reduced, shown = decode_crop(data, box, 64)
    assert shown == (40, 60, 300, 400)  # on the 1/4 grid already: the same source box
    full = cv2.resize(decode(data)[40:340, 60:460], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(reduced.astype(float) - full).mean() < 3.0
    _, moved = decode_crop(data, (41, 63, 301, 398), 64)
    assert moved == (40, 64, 300, 400)  # the box on that grid, in source pixels


def test_truncated_and_undecodable_images_are_counted_skips(group, tmp_path):
    names = [f["name"] for f in json.loads(group["group.json"])["frames"]]
    truncated = {**group, **{name: group[name][: len(group[name]) // 2] for name in names}}
    shard = tmp_path / "pairs-000000.tar"
    with wds.TarWriter(str(shard)) as writer:
        for index, sample in enumerate([group, truncated]):
            writer.write({k: v for k, v in sample.items() if not k.startswith("__")} | {"__key__": f"g{index}"})
    dm = PairDataModule("unused", val_shards=str(tmp_path), batch_size=4, num_workers=0, image_size=SIZE)
    batches = list(dm.val_dataloader())
    skipped = dict(zip(SKIP_KINDS, sum(b[SKIPPED_KEY] for b in batches).tolist()))
    assert skipped["corrupt_image"] == 1 and sum(len(b["key"]) for b in batches) == 1


@pytest.mark.parametrize("person_crop", [1.0, 2.0])
def test_person_crops_frame_the_person(group, person_crop):
    """Validation's person crop is the square of person_crop times the person's longer side, centred on it."""
    dm = PairDataModule("unused", val_shards="unused", image_size=SIZE, person_crop=person_crop)
    sampler = dm._sampler(train=False)
    for frame in json.loads(group["group.json"])["frames"]:
        view, _ = sampler.view(group, frame, None, with_mask=True)
        rows, cols = view["person"].nonzero(as_tuple=True)
        extent = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
        assert extent == pytest.approx(SIZE / person_crop, abs=2.5)
        for low, high in ((rows.min(), rows.max()), (cols.min(), cols.max())):
            assert (low + high) / 2 == pytest.approx((SIZE - 1) / 2, abs=1.5)


def test_person_crops_fall_back_to_the_silhouette_and_augment_within_their_ranges(group):
    """Without a ``bbox`` the square is drawn around the silhouette's bounds (with neither, the whole frame);
    augmentation scales the side by 0.8-1.25 and moves the centre by up to 10 % of it, using those ranges."""
    frame = json.loads(group["group.json"])["frames"][0]
    size = Image.open(io.BytesIO(group[frame["name"]])).size
    assert frame.get("bbox") and frame.get("mask")
    from_silhouette = person_box(group, {**frame, "bbox": None}, size)
    assert from_silhouette == pytest.approx(person_box(group, frame, size), abs=2.0)
    assert person_box(group, {**frame, "bbox": None, "mask": None}, size) == (0.0, 0.0, *map(float, size))
    sampler = PairDataModule("unused", val_shards="unused", image_size=SIZE, person_crop=1.5)._sampler(train=True)
    random.seed(0)
    draws = np.array([sampler.draw(*size)[0] for _ in range(2000)])
    scales, shifts = draws[:, 0], draws[:, 1:]
    assert PERSON_SCALE[0] <= scales.min() < 0.82 and 1.22 < scales.max() <= PERSON_SCALE[1]
    assert np.log(scales).mean() == pytest.approx(0.0, abs=0.02)  # log-uniform around the nominal side
    assert -PERSON_SHIFT <= shifts.min() < -0.095 and 0.095 < shifts.max() <= PERSON_SHIFT
