"""HUMBI body (https://humbi-data.net), as downloaded and unpacked:

    ROOT/subject_<n>/body/intrinsic.txt     3 header lines, then per camera 4 lines:
                                           "<word> <camera index>" and the 3 rows of K
    ROOT/subject_<n>/body/extrinsic.txt     3 header lines, then per camera 5 lines:
                                           "<word> <camera index>", the optical centre C (world,
                                           metres) and the 3 rows of R (world -> camera)
    ROOT/subject_<n>/body/<frame>/image/image<camera index, 7 digits>.jpg
    ROOT/subject_<n>/body/<frame>/reconstruction/keypoints.txt   25 OpenPose BODY_25 joints,
                                           one "X Y Z" world row each (missing: non-finite or zeros)

Cameras have no distortion model in HUMBI; `t = -R C`. Frames (the 8-digit folders, numeric
order, every `--stride`-th) make windows of `--times`; a group is a window seen by `--cameras`
of the ~107 cameras (a fixed random subset per group: 8 keeps groups near 1 MB at 224 px). A
person is cropped around the reconstructed 3D keypoints projected into each camera, which are
stored as joints_2d and (camera metres) joints_3d; images of cameras without calibration are
counted skips.
"""

import argparse
import re
from pathlib import Path

import numpy as np

from crocoman.convert.common import (
    SkipSample,
    add_pair_arguments,
    choose_cameras,
    encode_pair_group,
    observe,
    pair_settings,
    run_pair_conversion,
    split_by_name,
    windows,
)

OPENPOSE_BODY_25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
    "right_small_toe", "right_heel",
)  # fmt: skip
_IMAGE = re.compile(r"image(\d+)\.jpg$")
_HEADER_LINES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)


def _blocks(path: Path, lines_per_camera: int) -> dict[int, list[list[float]]]:
    """Camera index -> numeric rows of one calibration file (layout in the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: HUMBI body calibration lives in subject_<n>/body/"
                                f"{{intrinsic,extrinsic}}.txt")
    lines = [line.split() for line in path.read_text().splitlines()[_HEADER_LINES:] if line.strip()]
    if len(lines) % lines_per_camera:
        raise ValueError(f"{path}: {len(lines)} lines after the {_HEADER_LINES}-line header is not a multiple of "
                         f"{lines_per_camera} (one camera block); is this a HUMBI body calibration file?")
    blocks = {}
    for start in range(0, len(lines), lines_per_camera):
        header, *rows = lines[start:start + lines_per_camera]
        try:
            blocks[int(header[1])] = [[float(value) for value in row] for row in rows]
        except (IndexError, ValueError) as error:
            raise ValueError(f"{path}: camera block at line {_HEADER_LINES + start + 1} is not "
                             f"'<word> <index>' followed by numbers: {lines[start]}") from error
    return blocks


def load_cameras(body: Path) -> dict[str, dict]:
    """Camera index (as a string) -> K, R, t of one subject."""
    intrinsics = _blocks(body / "intrinsic.txt", 4)
    extrinsics = _blocks(body / "extrinsic.txt", 5)
    cameras = {}
    for index in sorted(set(intrinsics) & set(extrinsics)):
        centre, *rotation = extrinsics[index]
        R = np.asarray(rotation, dtype=np.float64)
        cameras[str(index)] = {"K": intrinsics[index], "R": R.tolist(),
                               "t": (-R @ np.asarray(centre, dtype=np.float64)).tolist()}
    return cameras


def read_keypoints(path: Path) -> np.ndarray:
    """(25, 4) world metres + confidence (0 for a missing joint); a missing or malformed file is a skip."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as error:
        raise SkipSample("unreadable keypoints", f"{path}: {error}") from error
    if points.shape != (len(OPENPOSE_BODY_25), 3):
        raise SkipSample("unreadable keypoints", f"{path}: shape {points.shape}, expected (25, 3)")
    present = np.isfinite(points).all(1) & (np.abs(points).sum(1) > 0)
    return np.concatenate([np.where(present[:, None], points, 0.0), present[:, None].astype(np.float64)], 1)


def encode_humbi_group(item: dict, size: int, margin: float) -> dict:
    """Read the window's keypoints (in the worker, not while listing), project them into each
    camera, then encode the group as every pair converter does."""
    world = {time: read_keypoints(path) for time, path in item["keypoints"].items()}
    frames = []
    for frame in item["frames"]:
        if "K" in frame:  # else encode_pair_group counts it as an uncalibrated camera
            joints_2d, joints_3d = observe(frame["K"], frame["R"], frame["t"], world[frame["time"]])
            frame = {**frame, "joints_2d": joints_2d, "joints_3d": joints_3d}
        frames.append(frame)
    return encode_pair_group({**item, "frames": frames}, size, margin)


def subject_groups(body: Path, times: int, stride: int, count: int) -> list[dict]:
    """The group items of one subject's body folder."""
    cameras = load_cameras(body)
    folders = sorted((path for path in body.iterdir() if path.is_dir() and path.name.isdigit()),
                     key=lambda path: int(path.name))
    subject = body.parent.name
    items = []
    for number, window in enumerate(windows(folders, times, stride)):
        key = f"{subject}-{number:06d}"
        images = {time: {str(int(match[1])): path for path in (folder / "image").glob("image*.jpg")
                         if (match := _IMAGE.search(path.name))} for time, folder in enumerate(window)}
        present = {camera for per_time in images.values() for camera in per_time}
        # the subset comes from calibrated cameras; images of uncalibrated ones join only to be counted as skips
        chosen = choose_cameras(sorted(present & set(cameras), key=int), count, key)
        frames = [
            {"image": images[time][camera], "camera": camera, "time": time, **cameras.get(camera, {})}
            for camera in [*chosen, *sorted(present - set(cameras), key=int)] for time in images
            if camera in images[time]
        ]
        items.append({"key": key, "subject": subject, "frames": frames,
                      "keypoints": {time: folder / "reconstruction" / "keypoints.txt"
                                    for time, folder in enumerate(window)}})
    return items


def convert(args: argparse.Namespace) -> dict:
    settings = pair_settings(args, "humbi")
    subjects = {path.name: path / "body" for path in sorted(args.root.glob("subject_*")) if (path / "body").is_dir()}
    if not subjects:
        raise FileNotFoundError(f"{args.root} has no subject_<n>/body/ folders: point --root at the folder holding "
                                f"the unpacked HUMBI body subjects")
    splits = {split: [item for body in chosen for item in subject_groups(body, args.times, args.stride, args.cameras)]
              for split, chosen in split_by_name(subjects, args.val, "subject").items()}
    return run_pair_conversion(args, "humbi", splits, encode_humbi_group, extra={"keypoints": list(OPENPOSE_BODY_25)},
                               settings=settings)
