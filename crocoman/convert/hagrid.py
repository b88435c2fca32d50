"""HaGRID -> labelled hand crops with a gesture class (task "hand", `cls`), one sample per box.

Layouts (https://github.com/hukenovs/hagrid), both read from `--root`:
- v2: `hagrid_dataset/<gesture>/<image_id>.jpg`, `hagrid_annotations/{train,val,test}/<gesture>.json`
  (or `annotations/{train,val,test}/`);
- v1: `<gesture>/` or `train_val_<gesture>/` image folders, `ann_train_val/`, `ann_test/` or
  `ann_subsample/<gesture>.json` (train_val and subsample become train).
Each annotation file maps an image id to `bboxes` (normalised [x, y, w, h], top-left origin) and
their `labels`, plus `user_id`; v2 adds `united_bbox` / `united_label` for two-handed gestures,
whose united box is the sample (other boxes of the image, e.g. a `no_gesture` hand, stay
samples of their own). Images are found anywhere under `--root` by their id.

Classes are the labels found in all annotation files, sorted, so a class id means the same in
every split; `no_gesture` is a class unless `--drop-no-gesture`. The manifest's `classes` names
them in `cls` order, which `LabelledDataModule` reads. No calibration: K is nominal
(`threedpw.NOMINAL_INTRINSICS`).
"""

import argparse
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from crocoman.convert.common import SkipSample, read_image, run_conversion
from crocoman.convert.labelled import (
    NOMINAL_INTRINSICS,
    crop_labelled,
    draw_labelled,
    labelled_sample,
    nominal_intrinsics,
)
from datamodules.format import CLASS_KEY

NO_GESTURE = "no_gesture"
# annotation folder name -> our split
ANNOTATION_SPLITS = {"train": "train", "val": "val", "test": "test", "ann_train_val": "train", "ann_test": "test",
                     "ann_subsample": "train"}


@dataclass(frozen=True)
class GestureBox:
    """One labelled box of one image (a stable repr fingerprints the shard)."""

    key: str
    image: Path | None  # None: the annotated image is not under --root
    subject: str
    box: tuple  # x, y, w, h as fractions of the image
    label: int


def annotation_files(root: Path) -> dict[str, list[Path]]:
    """`<gesture>.json` files per split, from the v1 and v2 annotation folders under `root`."""
    files: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.json")):
        split = ANNOTATION_SPLITS.get(path.parent.name)
        if split is not None and not any(part.startswith(".") for part in path.relative_to(root).parts):
            files.setdefault(split, []).append(path)
    files = {split: files[split] for split in ("train", "val", "test") if split in files}
    if not files:
        raise FileNotFoundError(
            f"no HaGRID annotations under {root}: expected hagrid_annotations/{{train,val,test}}/<gesture>.json "
            f"(v2) or ann_train_val/<gesture>.json (v1) from https://github.com/hukenovs/hagrid"
        )
    return files


def labelled_boxes(annotation: dict) -> list[tuple[list[float], str]]:
    """(box, label) of one image: united boxes of two-handed gestures, then the other hands."""
    united_boxes, united_labels = annotation.get("united_bbox") or [], annotation.get("united_label") or []
    united = [(box, label) for box, label in zip(united_boxes, united_labels) if box is not None and label is not None]
    hands = [(box, label) for box, label in zip(annotation["bboxes"], annotation["labels"])
             if label not in {label for _, label in united}]
    return united + hands


def gesture_boxes(files: dict[str, list[Path]], images: dict[str, Path],
                  drop_no_gesture: bool) -> tuple[dict[str, list[GestureBox]], list[str]]:
    """Items per split and the sorted class names they index."""
    found = {split: [(path, image_id, annotation) for path in paths
                     for image_id, annotation in json.loads(path.read_text()).items()]
             for split, paths in files.items()}
    labels = {label for entries in found.values() for _, _, annotation in entries
              for _, label in labelled_boxes(annotation)}
    classes = sorted(labels - ({NO_GESTURE} if drop_no_gesture else set()))
    index = {name: number for number, name in enumerate(classes)}
    splits = {}
    for split, entries in found.items():
        splits[split] = [
            GestureBox(key=f"hagrid_{image_id}_{number}", image=images.get(image_id),
                       subject=str(annotation.get("user_id", image_id)), box=tuple(map(float, box)), label=index[label])
            for path, image_id, annotation in entries
            for number, (box, label) in enumerate(labelled_boxes(annotation)) if label in index
        ]
    return splits, classes


def encode_box(item: GestureBox, size: int, margin: float) -> dict:
    """One gesture box -> a square hand crop with its class id."""
    if item.image is None:
        raise SkipSample("image missing", f"{item.key}: its image is not under --root")
    image = read_image(item.image)
    width, height = image.size
    x, y, w, h = item.box
    box_px = [x * width, y * height, w * width, h * height]
    crop, affine, _, bbox = crop_labelled(image, box_px, size, margin, min_side_px=4.0)
    return labelled_sample(item.key, crop, task="hand", K=affine @ nominal_intrinsics(width, height),
                           bbox=bbox, has={"gesture"}, subject=item.subject, body_model="mano",
                           files={CLASS_KEY: str(item.label).encode()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drop-no-gesture", action="store_true", help="leave out the no_gesture hands and class")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.2, help="crop margin around the hand box, per side")


def convert(args: argparse.Namespace) -> dict:
    """Every labelled box -> `args.out/{train,val,test}/hagrid-*.tar` with `cls` and manifest `classes`."""
    files = annotation_files(args.root)
    images = {path.stem: path for path in tqdm(args.root.rglob("*.jpg"), desc="hagrid: finding images", unit="image")}
    splits, classes = gesture_boxes(files, images, args.drop_no_gesture)
    encode = partial(encode_box, size=args.size, margin=args.margin)
    extra = {"task": "hand", "body_model": "mano", "classes": classes, "intrinsics": NOMINAL_INTRINSICS}
    settings = {"size": args.size, "margin": args.margin, "drop_no_gesture": args.drop_no_gesture}
    return run_conversion(args, "hagrid", splits, encode, shard_prefix="hagrid",
                          draw=partial(draw_labelled, classes=classes), extra=extra, settings=settings)
