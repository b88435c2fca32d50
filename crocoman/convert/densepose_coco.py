"""DensePose-COCO -> labelled body shards with `iuv.png` (task "body"), one sample per annotated person.

Layout (http://densepose.org): `annotations/densepose_coco_2014_{train,valminusminival,minival}.json`
as the DensePose repo downloads them, or `annotations/densepose_{train,valminusminival,minival}2014.json`
as detectron2's DensePose names them (COCO JSON; annotated people carry
`dp_I` (part 1..24), `dp_U`, `dp_V` (0..1), `dp_x`, `dp_y` (0..255 across the person's `bbox`)
and `dp_masks`: 14 coarse-part masks, COCO RLE over a 256 x 256 grid spanning the bbox) and the
COCO 2014 images under `train2014/` and `val2014/`. `train` and `valminusminival` become our train
split, `minival` val.

`iuv.png` channel 0 holds the part id (1..24) at the annotated points, 0 where the coarse masks
say background and 255 (unlabelled: the DensePose losses ignore it) on the rest of the person and
outside the bbox; channels 1 and 2 hold U and V scaled to 0..255 at the points, 0 elsewhere.
Points sit at `bbox.x + dp_x / 255 * bbox.w` (likewise y), as DensePose's own notebook draws them,
and the masks are stretched over the bbox. The RLE is decoded here (no pycocotools needed).
COCO has no calibration: K is nominal (`threedpw.NOMINAL_INTRINSICS`).
"""

import argparse
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from body.layouts import DENSEPOSE_PART_NAMES
from crocoman.convert.common import SkipSample, read_image, run_conversion, transform_points
from crocoman.convert.labelled import (
    NOMINAL_INTRINSICS,
    crop_labelled,
    draw_labelled,
    labelled_sample,
    nominal_intrinsics,
)
from datamodules.format import IUV_KEY, UNLABELLED, png_bytes

# annotation file -> (our split, image folder)
ANNOTATION_FILES = {"train": ("train", "train2014"), "valminusminival": ("train", "val2014"),
                    "minival": ("val", "val2014")}
MASK_SIZE = 256  # side of the dp_masks grid
COARSE_PARTS = 14


@dataclass(frozen=True)
class Person:
    """One DensePose-annotated person, as plain tuples (a stable repr fingerprints the shard)."""

    key: str
    image: Path
    subject: str
    bbox: tuple  # x, y, w, h in source pixels
    points: tuple  # (I, U, V, x, y) per annotated point, x and y in 0..255 across the bbox
    masks: tuple  # 14 coarse-part masks: RLE counts (str compressed or tuple of run lengths), or None


def rle_counts(text: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString): each count is
    5-bit groups offset by 48, 0x20 meaning another group follows and 0x10 in the last group a
    negative value; from the fourth count on the value is a difference to the count two before."""
    counts: list[int] = []
    data = text.encode()
    position = 0
    while position < len(data):
        value = shift = 0
        while True:
            if position == len(data):
                raise SkipSample("corrupt DensePose mask", f"RLE string {text[:20]!r} ends inside a count")
            group = data[position] - 48
            value |= (group & 0x1F) << shift
            position += 1
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value |= -1 << shift
                break
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(counts: str | tuple | list, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 0/1 mask of a COCO RLE (runs alternate 0s and 1s, column-major)."""
    runs = np.asarray(rle_counts(counts) if isinstance(counts, str) else counts, np.int64)
    if (runs < 0).any() or runs.sum() != height * width:
        raise SkipSample("corrupt DensePose mask", f"RLE runs sum to {runs.sum()}, not {height} x {width}")
    values = np.zeros(len(runs), np.uint8)
    values[1::2] = 1
    return np.repeat(values, runs).reshape(width, height).T


def coarse_parts(masks: tuple) -> np.ndarray | None:
    """(256, 256) coarse part index (0 background, 1..14) from the 14 masks, later parts on top
    (as DensePose's GetDensePoseMask); None when the person has no mask at all."""
    if all(mask is None for mask in masks):
        return None
    parts = np.zeros((MASK_SIZE, MASK_SIZE), np.uint8)
    for index, counts in enumerate(masks):
        if counts is not None:
            parts[decode_rle(counts, MASK_SIZE, MASK_SIZE) > 0] = index + 1
    return parts


def iuv_map(person: Person, affine: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 IUV of the crop that `affine` maps the source image to."""
    iuv = np.zeros((size, size, 3), np.uint8)
    iuv[..., 0] = UNLABELLED
    x, y, w, h = person.bbox
    parts = coarse_parts(person.masks)
    if parts is not None:
        # Crop pixel centres back to source pixels, then to the mask grid stretched over the bbox.
        centres = np.arange(size, dtype=np.float64)
        source_x = (centres - affine[0, 2]) / affine[0, 0]
        source_y = (centres - affine[1, 2]) / affine[1, 1]
        column = np.floor((source_x - x) / w * MASK_SIZE).astype(np.int64)
        row = np.floor((source_y - y) / h * MASK_SIZE).astype(np.int64)
        inside = ((row >= 0) & (row < MASK_SIZE))[:, None] & ((column >= 0) & (column < MASK_SIZE))[None, :]
        grid = parts[row.clip(0, MASK_SIZE - 1)[:, None], column.clip(0, MASK_SIZE - 1)[None, :]]
        iuv[inside & (grid == 0), 0] = 0
    points = np.asarray(person.points, np.float64).reshape(-1, 5)
    source = np.stack([x + points[:, 3] / 255 * w, y + points[:, 4] / 255 * h], axis=1)
    pixel = np.round(transform_points(affine, source)).astype(np.int64)
    in_crop = ((pixel >= 0) & (pixel < size)).all(1)
    if not in_crop.any():
        raise SkipSample("no DensePose points in the crop", person.key)
    columns, rows = pixel[in_crop].T
    iuv[rows, columns] = np.stack([points[in_crop, 0], np.round(points[in_crop, 1] * 255),
                                   np.round(points[in_crop, 2] * 255)], axis=1).astype(np.uint8)
    return iuv


def encode_person(person: Person, size: int, margin: float) -> dict:
    """One annotated person -> a body crop with its IUV map."""
    image = read_image(person.image)
    crop, affine, _, bbox = crop_labelled(image, person.bbox, size, margin)
    iuv = iuv_map(person, affine, size)
    return labelled_sample(person.key, crop, task="body", K=affine @ nominal_intrinsics(*image.size),
                           bbox=bbox, has={"densepose"}, subject=person.subject,
                           body_model="smpl", files={IUV_KEY: png_bytes(iuv)})


def _mask_counts(mask: dict | list) -> str | tuple | None:
    if not mask:
        return None
    counts = mask["counts"]
    return counts if isinstance(counts, str) else tuple(counts)


def annotated_people(path: Path, image_folder: Path) -> tuple[list[Person], int]:
    """The DensePose-annotated people of a COCO JSON file, and how many other people it lists."""
    data = json.loads(path.read_text())
    images = {image["id"]: image for image in data["images"]}
    people, unannotated = [], 0
    for annotation in data["annotations"]:
        if "dp_masks" not in annotation or annotation.get("iscrowd", 0):
            unannotated += 1
            continue
        masks = annotation["dp_masks"]
        if len(masks) != COARSE_PARTS:
            raise ValueError(f"{path}: annotation {annotation['id']} has {len(masks)} dp_masks, DensePose has 14")
        point_lists = [annotation[name] for name in ("dp_I", "dp_U", "dp_V", "dp_x", "dp_y")]
        if len({len(values) for values in point_lists}) != 1:
            raise ValueError(f"{path}: annotation {annotation['id']}: dp_I, dp_U, dp_V, dp_x, dp_y differ in length")
        image = images[annotation["image_id"]]
        people.append(Person(
            key=f"densepose_{annotation['image_id']:012d}_{annotation['id']}",
            image=image_folder / image["file_name"], subject=f"coco/{annotation['image_id']}",
            bbox=tuple(float(v) for v in annotation["bbox"]),
            points=tuple(zip(*(map(float, values) for values in point_lists))),
            masks=tuple(_mask_counts(mask) for mask in masks),
        ))  # fmt: skip
    return people, unannotated


def annotation_names(root: Path, name: str) -> tuple[Path, Path]:
    """Where the annotation file ``name`` (train, valminusminival, minival) may be: the DensePose repo's
    name, then detectron2's."""
    return root / "annotations" / f"densepose_coco_2014_{name}.json", root / "annotations" / f"densepose_{name}2014.json"


def annotation_file(root: Path, name: str) -> Path | None:
    return next((path for path in annotation_names(root, name) if path.is_file()), None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", nargs="+", choices=list(ANNOTATION_FILES), default=list(ANNOTATION_FILES),
                        help="which annotation files to convert, densepose_coco_2014_<name>.json or densepose_<name>2014.json "
                             "(those missing are reported)")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.1, help="crop margin around the person's bbox, per side")


def convert(args: argparse.Namespace) -> dict:
    """Every DensePose-annotated person -> `args.out/{train,val}/densepose-*.tar` with iuv.png."""
    splits: dict[str, list[Person]] = {}
    unannotated = 0
    for name in args.annotations:
        path = annotation_file(args.root, name)
        if path is None:
            print(f"densepose_coco: {' or '.join(map(str, annotation_names(args.root, name)))} not found, skipped")
            continue
        split, folder = ANNOTATION_FILES[name]
        people, others = annotated_people(path, args.root / folder)
        splits.setdefault(split, []).extend(people)
        unannotated += others
    if not splits:
        raise FileNotFoundError(f"no densepose_coco_2014_*.json or densepose_*2014.json under {args.root / 'annotations'}: "
                                f"--root must be the COCO folder with annotations/, train2014/ and val2014/ "
                                f"(http://densepose.org)")
    encode = partial(encode_person, size=args.size, margin=args.margin)
    extra = {"task": "body", "body_model": "smpl", "densepose_parts": list(DENSEPOSE_PART_NAMES),
             "iuv": "part 1..24 at points, 0 background (coarse masks), 255 unlabelled; U, V x 255",
             "intrinsics": NOMINAL_INTRINSICS, "people_without_densepose": unannotated}
    return run_conversion(args, "densepose_coco", splits, encode, shard_prefix="densepose", draw=draw_labelled,
                          extra=extra, settings={"size": args.size, "margin": args.margin,
                                                 "annotations": args.annotations})
