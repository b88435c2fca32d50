"""Any calibrated multi-camera capture, in a folder layout a lab can write without code:

    ROOT/cameras.json                      {"<camera>": {"K": 3x3, "R": 3x3, "t": [3]}, ...}
    ROOT/<sequence>/<camera>/<frame>.jpg   (or .png); <frame> names equal across cameras
    ROOT/<sequence>/<camera>/<frame>.mask.png    optional person mask (white = person)
    ROOT/<sequence>/boxes.json             optional {"<camera>": {"<frame>": [x, y, w, h]}}
    ROOT/<sequence>/keypoints_2d.json      optional {"<camera>": {"<frame>": [[x, y, confidence], ...]}}
    ROOT/<sequence>/keypoints_3d.json      optional {"<frame>": [[X, Y, Z, confidence], ...]} world metres

Cameras are OpenCV pinhole cameras (x right, y down, z forward; `X_cam = R X_world + t`, metres)
of undistorted images: a non-zero "dist" entry is refused. One sequence is one person. Frames
(sorted by name, numerically when they are numbers; every `--stride`-th) are cut into windows
of `--times` consecutive frames; a group is one window seen by all cameras (or `--cameras` of
them), time index 0..times-1 within the window. A person is cropped around its 2D keypoints,
else the 3D keypoints projected into the camera, else its box; a frame with none is skipped.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from crocoman.convert.common import (
    add_pair_arguments,
    choose_cameras,
    encode_pair_group,
    observe,
    pair_settings,
    rounded,
    run_pair_conversion,
    split_by_name,
    windows,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)


def frame_sort_key(name: str) -> tuple:
    """Numbers in numeric order (frame 10 after frame 9), other names alphabetically after them."""
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def load_cameras(path: Path) -> dict[str, dict]:
    """`cameras.json`, checked: 3x3 K and R, 3-vector t, and no lens distortion."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the generic layout needs a cameras.json of "
                                f'{{"<camera>": {{"K": 3x3, "R": 3x3, "t": [3]}}}} (see convert generic --help)')
    cameras = json.loads(path.read_text())
    for name, camera in cameras.items():
        shapes = {key: np.shape(camera.get(key)) for key in ("K", "R", "t")}
        if shapes != {"K": (3, 3), "R": (3, 3), "t": (3,)}:
            raise ValueError(f"{path}: camera {name!r} needs K 3x3, R 3x3 and t [3]; got shapes {shapes}")
        if np.any(np.asarray(camera.get("dist", []), dtype=np.float64) != 0):
            raise ValueError(f"{path}: camera {name!r} has lens distortion {camera['dist']}; crops assume "
                             f"pinhole cameras: undistort the images first and write zeros (or no 'dist')")
    return cameras


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def sequence_groups(sequence: Path, cameras: dict[str, dict], times: int, stride: int, count: int) -> list[dict]:
    """The group items of one sequence folder (see the module docstring)."""
    folders = sorted(path for path in sequence.iterdir() if path.is_dir())
    unknown = [folder.name for folder in folders if folder.name not in cameras]
    if unknown:
        raise ValueError(f"{sequence}: camera folders {unknown} are not in cameras.json (known: {sorted(cameras)})")
    images = {
        folder.name: {path.stem: path for path in folder.iterdir()
                      if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.endswith(".mask.png")}
        for folder in folders
    }
    boxes = _read_json(sequence / "boxes.json")
    keypoints_2d = _read_json(sequence / "keypoints_2d.json")
    keypoints_3d = _read_json(sequence / "keypoints_3d.json")
    names = sorted({name for per_camera in images.values() for name in per_camera}, key=frame_sort_key)
    items = []
    for number, window in enumerate(windows(names, times, stride)):
        key = f"{sequence.name}-{number:06d}"
        frames = []
        for camera in choose_cameras(sorted(images), count, key):
            calibration = cameras[camera]
            for time, name in enumerate(window):
                image = images[camera].get(name)
                if image is None:
                    continue
                mask = image.with_name(f"{name}.mask.png")
                frame = {"image": image, "mask": mask if mask.is_file() else None, "camera": camera, "time": time,
                         "K": calibration["K"], "R": calibration["R"], "t": calibration["t"],
                         "box": boxes.get(camera, {}).get(name)}
                if name in keypoints_3d:
                    joints_2d, joints_3d = observe(calibration["K"], calibration["R"], calibration["t"],
                                                   np.asarray(keypoints_3d[name], dtype=np.float64))
                    frame["joints_2d"], frame["joints_3d"] = rounded(joints_2d), rounded(joints_3d)
                if name in keypoints_2d.get(camera, {}):
                    frame["joints_2d"] = keypoints_2d[camera][name]
                frames.append(frame)
        items.append({"key": key, "subject": sequence.name, "frames": frames})
    return items


def convert(args: argparse.Namespace) -> dict:
    settings = pair_settings(args, "generic")
    cameras = load_cameras(args.root / "cameras.json")
    sequences = {path.name: path for path in sorted(args.root.iterdir()) if path.is_dir()}
    if not sequences:
        raise FileNotFoundError(f"{args.root} has no <sequence>/ folders next to cameras.json")
    splits = {
        split: [item for sequence in chosen
                for item in sequence_groups(sequence, cameras, args.times, args.stride, args.cameras)]
        for split, chosen in split_by_name(sequences, args.val, "sequence").items()
    }
    return run_pair_conversion(args, "generic", splits, encode_pair_group, extra={"cameras": sorted(cameras)},
                               settings=settings)
