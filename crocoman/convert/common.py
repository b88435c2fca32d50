"""What every dataset converter shares: resumable parallel shard writing, the manifest, person
crops with their intrinsics, and the `--preview` contact sheet.

A converter lists its *items* (one per output sample: a group of frames, or one person crop)
and gives an `encode(item) -> tar sample` function; `write_converted_shards` does the rest. Shard
`i` always holds items `[i * n, (i + 1) * n)`, so a shard is a pure function of the item list and
the settings: a complete shard is never rewritten, and an interrupted conversion resumes where
it stopped. An input that cannot be converted (unreadable image, person out of view) raises
`SkipSample` and is counted by reason instead of stopping a conversion of millions of frames; a
sample that lost only some parts (a group missing one frame) lists them under `PARTIAL_SKIPS`.
"""

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageDraw, UnidentifiedImageError
from tqdm import tqdm

from body.camera import project
from crocoman.checks import check_at_least
from datamodules.format import (
    CONVERT_VERSION,
    GROUP_KEY,
    MANIFEST,
    Box,
    FrameRecord,
    TarSample,
    crop_affine,
    frame_members,
    jpeg_bytes,
    json_bytes,
    map_points,
    png_bytes,
    read_group,
)

STATE_DIR = ".convert"  # per-shard completion records, beside the splits
PARTIAL_SKIPS = "__skips__"  # an encoded sample may list the parts it dropped (SkipSample each), to be counted
_EXAMPLES_PER_REASON = 3
_DECIMALS = 6


class SkipSample(Exception):
    """An input that cannot become a sample. `reason` is the category counted in the manifest
    (keep it short and free of file names); `detail` names the file or value for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def add_common_arguments(parser: argparse.ArgumentParser, samples_per_shard: int = 100) -> None:
    """The options every `crocoman-data convert <dataset>` takes."""
    parser.add_argument("--root", type=Path, required=True, help="the dataset as downloaded")
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>/*.tar and manifest.json")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    parser.add_argument("--samples-per-shard", type=int, default=samples_per_shard)
    parser.add_argument("--preview", type=int, default=0, metavar="N",
                        help="also write preview.png, a contact sheet of N random samples with their labels")


# ----------------------------------------------------------------------------- shard writing


def _shard_name(shard_prefix: str, index: int) -> str:
    return f"{shard_prefix}-{index:06d}.tar"


def _fingerprint(items: Sequence, settings: dict | None) -> str:
    """What a shard was made from: its items' repr and the conversion settings. Items should be
    plain data (tuples, dataclasses, paths) so that the repr is stable across runs."""
    text = json.dumps(settings or {}, sort_keys=True, default=str) + "\n" + "\n".join(map(repr, items))
    return hashlib.sha256(text.encode()).hexdigest()


def _write_shard(job: tuple[int, Sequence, str], encode: Callable[[object], dict], split_dir: Path,
                 state_dir: Path, shard_prefix: str) -> dict:
    """Encode one shard's items and publish the tar, then its completion record, each by an
    atomic rename: a tar that exists is whole, and a record that exists means the shard is done."""
    index, items, fingerprint = job
    name = _shard_name(shard_prefix, index)
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    temporary = split_dir / f".{name}.tmp-{os.getpid()}"
    samples = 0
    with wds.TarWriter(str(temporary), mtime=0) as writer:
        for item in items:
            try:
                sample = encode(item)
            except SkipSample as skip:
                sample = {PARTIAL_SKIPS: [skip]}
            for skip in sample.pop(PARTIAL_SKIPS, []):
                skipped[skip.reason] += 1
                if len(examples.setdefault(skip.reason, [])) < _EXAMPLES_PER_REASON:
                    examples[skip.reason].append(skip.detail)
            if "__key__" not in sample:
                continue
            writer.write(sample)
            samples += 1
    target = split_dir / name
    if samples:
        os.replace(temporary, target)
    else:  # an empty tar would be a shard that yields nothing; the record alone says the items were seen
        temporary.unlink()
        target.unlink(missing_ok=True)
    record = {"index": index, "fingerprint": fingerprint, "path": name if samples else None, "samples": samples,
              "items": len(items), "bytes": target.stat().st_size if samples else 0, "skipped": dict(skipped),
              "skip_examples": examples}
    record_path = state_dir / f"{name}.json"
    temporary_record = state_dir / f".{name}.json.tmp-{os.getpid()}"
    temporary_record.write_text(json.dumps(record))
    os.replace(temporary_record, record_path)
    return record


def _completed(state_dir: Path, split_dir: Path, shard_prefix: str, jobs: list[tuple[int, Sequence, str]]) -> dict:
    """Records of shards a previous run finished with the same items and settings; a record from
    other settings is an error, since mixing both runs' shards would be silent corruption."""
    done = {}
    for index, _, fingerprint in jobs:
        name = _shard_name(shard_prefix, index)
        record_path = state_dir / f"{name}.json"
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        if record["fingerprint"] != fingerprint:
            raise FileExistsError(
                f"{split_dir / name} was written from other inputs or settings than this run's ({record_path}); "
                f"rerun with the same arguments to resume, or delete {split_dir.parent} to start over"
            )
        if record["path"] and not (split_dir / record["path"]).is_file():
            continue  # the record outlived its tar (deleted by hand): write it again
        done[index] = record
    return done


def _refuse_foreign_shards(split_dir: Path, shard_prefix: str, num_shards: int) -> None:
    wanted = {_shard_name(shard_prefix, index) for index in range(num_shards)}
    foreign = sorted(p.name for p in split_dir.glob("*.tar") if p.name not in wanted)
    if foreign:
        raise FileExistsError(
            f"{split_dir} holds {len(foreign)} shards this conversion would not write (e.g. {foreign[0]}); a reader "
            f"globbing the folder would mix them in. Delete them or choose another --out"
        )


def _encoded(job: partial, jobs: list[tuple], workers: int) -> Iterable[dict]:
    """Shard records as they finish, one shard per task so that few shards still spread. Workers
    fork from a forkserver that imported the converter once (a spawned worker would import torch
    again per process and split; forking the parent, which may have run torch's thread pools,
    can deadlock), and run one thread each."""
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("forkserver")
        encode = job.keywords["encode"]
        context.set_forkserver_preload([__name__, getattr(encode, "func", encode).__module__])
        with context.Pool(min(workers, len(jobs)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield from pool.imap_unordered(job, jobs, chunksize=1)
    else:
        yield from map(job, jobs)


def write_converted_shards(
    out_dir: str | Path,
    split: str,
    items: Sequence,
    encode: Callable[[object], dict],
    *,
    samples_per_shard: int,
    workers: int,
    shard_prefix: str,
    desc: str,
    settings: dict | None = None,
) -> dict:
    """Encode `items` into `out_dir/<split>/<shard_prefix>-%06d.tar`, `samples_per_shard` items a
    shard, skipping shards a previous run with the same items and `settings` completed.

    `encode` must be picklable (a module-level function or a `functools.partial` of one) when
    `workers > 1`; its module is imported once in the forkserver the workers fork from. Returns
    the split's summary: samples written, shards (path relative to `out_dir`, samples, bytes),
    skip counts and a few examples by reason, resumed shards, seconds.
    """
    check_at_least("write_converted_shards", samples_per_shard=(samples_per_shard, 1), workers=(workers, 1))
    if not items:
        raise ValueError(f"{desc}: no {split} items to convert; check --root and the converter's options")
    started = time.perf_counter()
    out = Path(out_dir)
    split_dir, state_dir = out / split, out / STATE_DIR / split
    split_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*split_dir.glob(".*.tmp-*"), *state_dir.glob(".*.tmp-*")]:
        leftover.unlink()  # from an interrupted run
    num_shards = math.ceil(len(items) / samples_per_shard)
    _refuse_foreign_shards(split_dir, shard_prefix, num_shards)
    jobs = []
    for index in range(num_shards):
        shard_items = list(items[index * samples_per_shard:(index + 1) * samples_per_shard])
        jobs.append((index, shard_items, _fingerprint(shard_items, settings)))
    records = _completed(state_dir, split_dir, shard_prefix, jobs)
    if records:
        print(f"{desc}: {split}: {len(records)} of {num_shards} shards already complete, resuming")
    pending = [job for job in jobs if job[0] not in records]
    job = partial(_write_shard, encode=encode, split_dir=split_dir, state_dir=state_dir, shard_prefix=shard_prefix)
    resumed = len(records)
    initial = sum(record["items"] for record in records.values())
    with tqdm(total=len(items), initial=initial, unit="item", desc=f"{desc} {split}") as bar:
        for record in _encoded(job, pending, workers):
            records[record["index"]] = record
            bar.update(record["items"])
    ordered = [records[index] for index in range(num_shards)]
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for record in ordered:
        skipped.update(record["skipped"])
        for reason, details in record["skip_examples"].items():
            examples[reason] = (examples.get(reason, []) + details)[:_EXAMPLES_PER_REASON]
    return {
        "items": len(items),
        "samples": sum(record["samples"] for record in ordered),
        "shards": [{"path": f"{split}/{record['path']}", "samples": record["samples"], "bytes": record["bytes"]}
                   for record in ordered if record["path"]],
        "skipped": dict(sorted(skipped.items())),
        "skip_examples": examples,
        "resumed_shards": resumed,
        "seconds": round(time.perf_counter() - started, 2),
    }


def write_manifest(out_dir: str | Path, dataset: str, splits: dict[str, dict], extra: dict | None = None) -> dict:
    """Write `out_dir/manifest.json` (splits as returned by `write_converted_shards`, totals,
    skip counts by reason, and `extra`: keypoint names, classes, body model, settings), print the
    one-line summary, and return the manifest."""
    skipped: Counter[str] = Counter()
    for summary in splits.values():
        skipped.update(summary["skipped"])
    totals = {
        "samples": sum(summary["samples"] for summary in splits.values()),
        "shards": sum(len(summary["shards"]) for summary in splits.values()),
        "bytes": sum(shard["bytes"] for summary in splits.values() for shard in summary["shards"]),
        "skipped": sum(skipped.values()),
    }
    manifest = {"version": CONVERT_VERSION, "dataset": dataset, **(extra or {}), "splits": splits, "totals": totals,
                "skipped": dict(sorted(skipped.items()))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    per_split = ", ".join(f"{summary['samples']} {split}" for split, summary in splits.items())
    resumed = sum(summary["resumed_shards"] for summary in splits.values())
    seconds = sum(summary["seconds"] for summary in splits.values())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in manifest["skipped"].items())
    print(f"convert {dataset}: {per_split} samples in {totals['shards']} shards ({resumed} resumed), "
          f"{totals['bytes'] / 1e6:.1f} MB, skipped {totals['skipped']}{f' ({reasons})' if reasons else ''}, "
          f"{seconds:.1f} s -> {out}")
    return manifest


def run_conversion(args: argparse.Namespace, dataset: str, splits: dict[str, Sequence],
                   encode: Callable[[object], dict], *, shard_prefix: str, draw: Callable[[dict], Image.Image],
                   extra: dict | None = None, settings: dict | None = None) -> dict:
    """The end of every converter: write each split's shards (resumable, `args.workers`
    processes), the manifest with `extra` and `settings` in it, and the `--preview` sheet."""
    summaries = {
        split: write_converted_shards(args.out, split, items, encode, samples_per_shard=args.samples_per_shard,
                                      workers=args.workers, shard_prefix=shard_prefix, desc=dataset,
                                      settings=settings)
        for split, items in splits.items()
    }
    manifest = write_manifest(args.out, dataset, summaries, {**(extra or {}), "settings": settings or {}})
    if args.preview:
        contact_sheet(args.out, args.preview, draw)
    return manifest


def split_by_name(units: dict[str, object], val_names: Sequence[str], what: str) -> dict[str, list]:
    """Train and val lists of units (subjects, sequences, videos) by name; an unknown val name is
    an error that lists the known ones, since a typo would silently validate on training data."""
    unknown = sorted(set(val_names) - set(units))
    if unknown:
        raise ValueError(f"--val names unknown {what}s {unknown}; known: {sorted(units)}")
    splits = {"train": [unit for name, unit in units.items() if name not in val_names]}
    if val_names:
        splits["val"] = [unit for name, unit in units.items() if name in val_names]
    return splits


# ----------------------------------------------------------------------------- crops


def read_image(path: Path, mode: str = "RGB") -> Image.Image:
    """The image at `path`, fully decoded; a missing or corrupt file is a counted skip."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError) as error:  # FileNotFoundError is an OSError
        raise SkipSample("unreadable image", f"{path}: {error}") from error


def square_crop_box(points_or_box: np.ndarray | Sequence[float], margin: float = 0.2, *,
                    min_confidence: float = 0.1, min_side_px: float = 16.0) -> Box:
    """A square (top, left, side, side) box in whole pixels around a person, for `crop_person`.

    Takes (N, 2) points, (N, 3) points whose third column is a confidence (points below
    `min_confidence` or non-finite are ignored), or an [x, y, w, h] box; the square is centred on
    their extent and its side is the longer extent times (1 + 2 * margin). Too few points or a
    box smaller than `min_side_px` is a `SkipSample`.
    """
    values = np.asarray(points_or_box, dtype=np.float64)
    if values.ndim == 1:
        if values.shape != (4,):
            raise ValueError(f"square_crop_box: a box is [x, y, w, h], got {values.tolist()}")
        x, y, w, h = values
        low, high = np.array([x, y]), np.array([x + w, y + h])
    else:
        points = values[:, :2]
        valid = np.isfinite(points).all(1)
        if values.shape[1] > 2:
            valid &= values[:, 2] >= min_confidence
        if valid.sum() < 2:
            raise SkipSample("too few keypoints", f"{int(valid.sum())} of {len(values)} usable")
        low, high = points[valid].min(0), points[valid].max(0)
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or (high - low).max() < min_side_px:
        raise SkipSample("person too small", f"extent {(high - low).tolist()} px < {min_side_px}")
    side = math.ceil((high - low).max() * (1 + 2 * margin))
    centre = (low + high) / 2
    left, top = (round(c - side / 2) for c in centre)
    return top, left, side, side


def crop_person(image: Image.Image, box: Box, size: int,
                resample: Image.Resampling = Image.Resampling.BILINEAR) -> tuple[Image.Image, np.ndarray]:
    """`box` (top, left, height, width) of `image` resized to `size` x `size`, with zeros where it
    leaves the image, and the 3x3 map from source to crop pixels (`datamodules.format.crop_affine`):
    2D points move by `A @ p`, intrinsics by `K_crop = A @ K`. Masks take `Image.Resampling.NEAREST`."""
    top, left, height, width = box
    crop = image.crop((left, top, left + width, top + height)).resize((size, size), resample)
    return crop, crop_affine(box, size).numpy()


def transform_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2+) pixel points moved by a 3x3 affine; columns after the second (confidences) kept."""
    return np.concatenate([map_points(affine, points[:, :2]), points[:, 2:]], axis=1)


def transform_box(affine: np.ndarray, box: Sequence[float]) -> list[float]:
    """An [x, y, w, h] box (corner convention) under a scale-and-shift affine."""
    x, y, w, h = box
    (x0, y0), (x1, y1) = transform_points(affine, np.array([[x, y], [x + w, y + h]], dtype=np.float64))
    return [x0, y0, x1 - x0, y1 - y0]


def _clipped_box(box: Sequence[float], size: int) -> list[float]:
    """[x, y, w, h] cut to the `size` x `size` crop (what `datamodules.pairs.person_mask` fills)."""
    x, y, w, h = box
    x0, y0, x1, y1 = np.clip([x, y, x + w, y + h], 0, size)
    return rounded([x0, y0, x1 - x0, y1 - y0])


def rounded(values: np.ndarray | Sequence) -> list:
    """JSON-ready nested lists at 1e-6 (1 um in camera space, 1e-6 px); NaN becomes 0."""
    return np.nan_to_num(np.round(np.asarray(values, dtype=np.float64), _DECIMALS)).tolist()


# ----------------------------------------------------------------------------- pair groups


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every pair-shard converter: crop, group shape and the validation split."""
    parser.add_argument("--size", type=int, default=224, help="side of the square person crops in pixels")
    parser.add_argument("--margin", type=float, default=0.2, help="crop margin around the person, per side")
    parser.add_argument("--times", type=int, default=3,
                        help="consecutive sampled frames per group (time indices 0..times-1: cross-pose pairs)")
    parser.add_argument("--stride", type=int, default=1, help="use every stride-th frame")
    parser.add_argument("--cameras", type=int, default=0,
                        help="cameras per group, a fixed random subset per group (0: all; cross-view pairs)")
    parser.add_argument("--val", nargs="*", default=[], metavar="NAME",
                        help="subjects / sequences / videos held out as the val split")


def pair_settings(args: argparse.Namespace, dataset: str, **more: object) -> dict:
    """The options a pair shard depends on (resume refuses shards made with others)."""
    check_at_least(f"convert {dataset}", size=(args.size, 16), times=(args.times, 1),
                   stride=(args.stride, 1), cameras=(args.cameras, 0))
    return {"size": args.size, "margin": args.margin, "times": args.times, "stride": args.stride,
            "cameras": args.cameras, **more}


def run_pair_conversion(args: argparse.Namespace, dataset: str, splits: dict[str, Sequence],
                        encode_group: Callable[..., TarSample], *, extra: dict, settings: dict) -> dict:
    """The end of every pair converter: `run_conversion` of pair shards (pairs-*.tar, previewed by
    `draw_pair_group`), each group encoded by `encode_group(item, size, margin)` with the crop options
    of `add_pair_arguments` (`encode_pair_group`, or a converter's reader that ends in it)."""
    encode = partial(encode_group, size=args.size, margin=args.margin)
    return run_conversion(args, dataset, splits, encode, shard_prefix="pairs", draw=draw_pair_group, extra=extra,
                          settings=settings)


def windows(frames: Sequence, times: int, stride: int) -> list[list]:
    """Non-overlapping runs of `times` consecutive frames of `frames[::stride]` (a short tail is dropped)."""
    sampled = list(frames)[::stride]
    return [sampled[start:start + times] for start in range(0, len(sampled) - times + 1, times)]


def choose_cameras(cameras: Sequence[str], count: int, key: str) -> list[str]:
    """`count` of `cameras` (all for 0), a subset fixed by the group key, so reruns pick the same."""
    if not count or count >= len(cameras):
        return list(cameras)
    return sorted(random.Random(zlib.crc32(key.encode())).sample(sorted(cameras), count))


def observe(K: np.ndarray, R: np.ndarray, t: np.ndarray, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the camera (K, R, t) sees of world points (J, 3 or 4: + confidence): (joints_2d (J, 3),
    joints_3d (J, 4)), pixels and camera metres, each with the confidence (0 behind the camera or
    non-finite)."""
    points = np.asarray(points_world, dtype=np.float64)
    confidence = points[:, 3] if points.shape[1] > 3 else np.ones(len(points))
    camera = points[:, :3] @ np.asarray(R, dtype=np.float64).T + np.asarray(t, dtype=np.float64).reshape(3)
    usable = np.isfinite(camera).all(1) & (camera[:, 2] > 1e-6) & (confidence > 0)
    confidence = np.where(usable, confidence, 0.0)
    pixels = project(torch.from_numpy(np.where(usable[:, None], camera, 1.0))[None],
                     torch.as_tensor(np.asarray(K, dtype=np.float64))[None])[0].numpy()
    pixels = np.where(usable[:, None], pixels, 0.0)
    return (np.concatenate([pixels, confidence[:, None]], 1),
            np.concatenate([np.where(usable[:, None], camera, 0.0), confidence[:, None]], 1))


def encode_pair_group(item: dict, size: int, margin: float) -> TarSample:
    """One pair-shard sample (``datamodules.format.GroupRecord`` and its frames' members) from an item
    {key, subject, frames, (group: extra group.json fields)} whose frames are
    {image: Path or PIL.Image (None: not decoded), mask: Path | None, source (optional, named in
    skips), camera, time, K, R, t, and joints_2d (J, 3: x, y,
    confidence; optional joints_3d (J, 4): camera metres + confidence) or box [x, y, w, h]} in
    source pixels. Each frame is cropped square around its keypoints (else its box), and its
    intrinsics, keypoints and box are moved into the crop. A frame that cannot be cropped is
    dropped and counted; a group left with fewer than two frames is a `SkipSample`."""
    key, frames = item["key"], item["frames"]
    sample: TarSample = {"__key__": key}
    records = []
    dropped = []
    for frame in frames:
        try:
            record, files = _crop_frame(frame, len(records), size, margin)
        except SkipSample as skip:
            dropped.append(SkipSample(f"frame: {skip.reason}", skip.detail))
            continue
        records.append(record)
        sample.update(files)
    if len(records) < 2:
        raise SkipSample("group: fewer than 2 usable frames", f"{key}: {len(records)} of {len(frames)} usable"
                         + "".join(f"; {skip}" for skip in dropped[:2]))
    group = {"subject": item["subject"], **item.get("group", {}), "frames": records}
    sample[GROUP_KEY] = json_bytes(group)
    sample[PARTIAL_SKIPS] = dropped
    return sample


def _crop_frame(frame: dict, number: int, size: int, margin: float) -> tuple[FrameRecord, dict[str, bytes]]:
    source = frame.get("source", frame["image"])  # what a skip names: a path, or a video and time
    if frame.get("K") is None:
        raise SkipSample("camera not calibrated", f"{source}: camera {frame['camera']}")
    if frame["image"] is None:
        raise SkipSample("frame not decoded", f"{source}")
    joints_2d = None if frame.get("joints_2d") is None else np.asarray(frame["joints_2d"], dtype=np.float64)
    if joints_2d is not None and joints_2d.shape[1] == 2:  # keypoints without confidences: all present
        joints_2d = np.concatenate([joints_2d, np.ones((len(joints_2d), 1))], axis=1)
    if joints_2d is None and frame.get("box") is None:
        raise SkipSample("no keypoints or box", f"{source}")
    try:
        box = square_crop_box(joints_2d if joints_2d is not None else frame["box"], margin)
    except SkipSample:
        if joints_2d is None or frame.get("box") is None:
            raise
        box = square_crop_box(frame["box"], margin)  # too few confident keypoints: the box decides
    image = frame["image"] if isinstance(frame["image"], Image.Image) else read_image(frame["image"])
    top, left, side, _ = box
    if left >= image.width or top >= image.height or left + side <= 0 or top + side <= 0:
        raise SkipSample("person outside the image", f"{source}: box {box} in {image.size}")
    crop, affine = crop_person(image, box, size)
    image_key, mask_key = frame_members(number)
    record: FrameRecord = {"name": image_key, "camera": str(frame["camera"]), "time": int(frame["time"]),
              "K": rounded(affine @ np.asarray(frame["K"], dtype=np.float64)), "R": rounded(frame["R"]),
              "t": rounded(np.asarray(frame["t"], dtype=np.float64).reshape(3))}
    files = {image_key: jpeg_bytes(torch.from_numpy(np.array(crop)))}
    if frame.get("mask") is not None:
        mask, _ = crop_person(read_image(frame["mask"], "L"), box, size, Image.Resampling.NEAREST)
        files[mask_key] = png_bytes((np.asarray(mask) > 127).astype(np.uint8) * 255)
        record["mask"] = mask_key
    if joints_2d is not None:
        crop_joints = transform_points(affine, joints_2d)
        if crop_joints.shape[1] > 2:  # a joint without confidence has no position either: 0, 0, 0
            crop_joints[crop_joints[:, 2] <= 0] = 0.0
        record["joints_2d"] = rounded(crop_joints)
    if frame.get("box") is not None:
        record["bbox"] = _clipped_box(transform_box(affine, frame["box"]), size)
    else:  # the keypoints' extent: square_crop_box found at least two confident ones
        crop_joints = np.asarray(record["joints_2d"])
        visible = crop_joints[crop_joints[:, 2] > 0, :2]
        record["bbox"] = _clipped_box([*visible.min(0), *(visible.max(0) - visible.min(0))], size)
    if frame.get("joints_3d") is not None:
        record["joints_3d"] = rounded(frame["joints_3d"])
    return record, files


# ----------------------------------------------------------------------------- preview


def _points(draw: ImageDraw.ImageDraw, points: np.ndarray, colour: str, radius: float = 1.5) -> None:
    for x, y, *confidence in points:
        if not confidence or confidence[0] > 0:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def draw_pair_group(sample: dict) -> Image.Image:
    """A pair group as one row of its frames, each with its box (green), 2D joints (red) and the
    3D joints projected with the stored crop intrinsics (blue: they must land on the red ones)."""
    group = read_group(sample)
    tiles = []
    for frame in group["frames"]:
        image = Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB")
        if frame.get("mask"):
            mask = Image.open(io.BytesIO(sample[frame["mask"]])).convert("L").point(lambda v: v // 3)
            image = Image.composite(Image.new("RGB", image.size, (255, 255, 0)), image, mask)
        draw = ImageDraw.Draw(image)
        x, y, w, h = frame["bbox"]
        draw.rectangle((x, y, x + w, y + h), outline="lime")
        if frame.get("joints_3d"):
            joints_3d = np.asarray(frame["joints_3d"], dtype=np.float64)
            in_front = joints_3d[:, 2] > 1e-6
            projected = joints_3d[in_front, :3] @ np.asarray(frame["K"]).T
            _points(draw, projected[:, :2] / projected[:, 2:], "blue", radius=2.5)
        if frame.get("joints_2d"):
            _points(draw, np.asarray(frame["joints_2d"]), "red")
        draw.text((2, 2), f"{frame['camera']} t{frame['time']}", fill="white")
        tiles.append(image)
    row = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    for number, tile in enumerate(tiles):
        row.paste(tile, (sum(t.width for t in tiles[:number]), 0))
    return row


def contact_sheet(out_dir: str | Path, n: int, draw: Callable[[dict], Image.Image], seed: int = 0) -> Path:
    """Write `out_dir/preview.png`: `n` samples drawn at random (uniformly, by `seed`) from every
    shard under `out_dir`, each rendered by `draw(raw tar sample)`, tiled in a roughly square grid."""
    check_at_least("contact_sheet", n=(n, 1))
    urls = sorted(str(path) for path in Path(out_dir).glob("*/*.tar"))
    if not urls:
        raise FileNotFoundError(f"contact_sheet: no shards under {out_dir}/*/ to preview")
    rng = random.Random(seed)
    chosen: list[dict] = []
    for seen, sample in enumerate(wds.WebDataset(urls, shardshuffle=False, empty_check=False)):
        if len(chosen) < n:  # reservoir sampling: one pass, n samples, each equally likely
            chosen.append(sample)
        elif (slot := rng.randrange(seen + 1)) < n:
            chosen[slot] = sample
    tiles = [draw(sample) for sample in chosen]
    columns = max(1, round(math.sqrt(len(tiles) * max(t.height for t in tiles) / max(t.width for t in tiles))))
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "gray")
    for number, tile in enumerate(tiles):
        sheet.paste(tile, ((number % columns) * cell_w, (number // columns) * cell_h))
    path = Path(out_dir) / "preview.png"
    sheet.save(path)
    print(f"preview: {len(tiles)} samples -> {path}")
    return path
