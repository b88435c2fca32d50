"""AIST++ (https://google.github.io/aistplusplus_dataset): the annotations as unpacked
(`aist_plusplus_final/`) and the AIST Dance videos fetched by its downloader:

    ROOT/cameras/mapping.txt             "<sequence> <setting>" per line
    ROOT/cameras/<setting>.json          [{"name": "c01", "size": [W, H], "matrix": K 3x3,
                                           "distortions": [5], "rotation": Rodrigues [3],
                                           "translation": [3]}, ...]  (X_cam = R X + t, world units)
    ROOT/keypoints2d/<sequence>.pkl      {"keypoints2d": (9 views, N, 17, 3) COCO x, y, score, ...}
    ROOT/keypoints3d/<sequence>.pkl      {"keypoints3d": (N, 17, 3), "keypoints3d_optim": ...} world
    ROOT/ignore_list.txt                 sequences with bad annotations (skipped, listed in the manifest)
    VIDEOS/<sequence with cAll -> c01..c09>.mp4    e.g. gBR_sBM_c01_d04_mBR0_ch01.mp4

A sequence name such as gBR_sBM_cAll_d04_mBR0_ch01 names all nine views. The keypoint files
are Python pickles, which can run code when loaded: converting needs `--trust-pickle`, and even
then only numpy arrays are accepted from them. Frame n of the keypoints is video time
n / `--video-fps` (60). Frames (every `--stride`-th) make windows of `--times`; a group is a
window seen by all views (or `--cameras` of them). A person is cropped around its 2D keypoints;
the 3D keypoints (`keypoints3d_optim`) are stored in camera metres (`--unit-m` per world unit:
AIST++ uses centimetres). Lens distortion is not modelled: crops keep the distorted pixels,
the stored K is the pinhole part (the manifest says so).
"""

import argparse
import functools
import json
import pickle
from pathlib import Path

import numpy as np
import torch

from body.rotations import axis_angle_to_matrix
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
from crocoman.convert.video import decode_frames
from datamodules import safe_pickle

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip
VIEWS = tuple(f"c{number:02d}" for number in range(1, 10))  # keypoints2d view order
@functools.lru_cache(maxsize=4)  # a shard's groups come from few sequences: read each file once per worker
def load_keypoints(path: Path) -> dict:
    """A keypoint pickle's arrays; a missing or unreadable one is a counted skip."""
    try:
        with open(path, "rb") as file:
            return safe_pickle.load(file, "AIST++ keypoint file")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise SkipSample("unreadable keypoints", f"{path}: {error}") from error
    except KeyError as error:  # pickle.Unpickler raises it on a truncated or foreign stream
        raise SkipSample("unreadable keypoints", f"{path}: {error!r}") from error


def load_settings(cameras_dir: Path, unit_m: float) -> tuple[dict[str, str], dict[str, dict[str, dict]]]:
    """(sequence -> setting, setting -> view -> K, R, t in metres)."""
    mapping_path = cameras_dir / "mapping.txt"
    if not mapping_path.is_file():
        raise FileNotFoundError(f"{mapping_path} is missing: --root must be the unpacked AIST++ annotations "
                                f"(aist_plusplus_final/ with cameras/, keypoints2d/, keypoints3d/)")
    mapping = dict(line.split()[:2] for line in mapping_path.read_text().splitlines() if line.strip())
    settings = {}
    for setting in sorted(set(mapping.values())):
        path = cameras_dir / f"{setting}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (named in {mapping_path})")
        settings[setting] = {
            camera["name"]: {"K": camera["matrix"],  # rotations are axis-angle vectors (OpenCV's Rodrigues)
                             "R": axis_angle_to_matrix(torch.tensor(camera["rotation"], dtype=torch.float64)).tolist(),
                             "t": (np.asarray(camera["translation"], dtype=np.float64) * unit_m).tolist()}
            for camera in json.loads(path.read_text())
        }
    return mapping, settings


def encode_aist_group(item: dict, size: int, margin: float, unit_m: float) -> dict:
    """Read the window's keypoints and decode its frames from each view's video (in the worker),
    then encode the group as every pair converter does."""
    keypoints_2d = load_keypoints(item["keypoints2d"])["keypoints2d"]
    keypoints_3d = load_keypoints(item["keypoints3d"])["keypoints3d_optim"] * unit_m
    frames = []
    for camera, video in item["videos"].items():
        view = VIEWS.index(camera)
        try:
            images = decode_frames(video, [index / item["video_fps"] for index in item["frame_indices"]])
        except SkipSample:
            images = {}  # this view's frames are counted as not decoded; the other views still make pairs
        for time, index in enumerate(item["frame_indices"]):
            calibration = item["cameras"][camera]
            _, joints_3d = observe(calibration["K"], calibration["R"], calibration["t"], keypoints_3d[index])
            frames.append({"image": images.get(index / item["video_fps"]), "source": f"{video}#{index}",
                           "camera": camera, "time": time, **calibration, "joints_2d": keypoints_2d[view, index],
                           "joints_3d": joints_3d})
    return encode_pair_group({**item, "frames": frames}, size, margin)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)
    parser.add_argument("--videos", type=Path, default=None, help="folder of the AIST videos (default ROOT/videos)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow reading the keypoint .pkl files (pickles run code when loaded)")
    parser.add_argument("--video-fps", type=float, default=60.0, help="frame rate the keypoints are indexed at")
    parser.add_argument("--unit-m", type=float, default=0.01, help="metres per world unit of the annotations")


def convert(args: argparse.Namespace) -> dict:
    settings = pair_settings(args, "aist", video_fps=args.video_fps, unit_m=args.unit_m)
    if not args.trust_pickle:
        raise PermissionError("AIST++ keypoints are Python pickles, which can run code when loaded; pass "
                              "--trust-pickle if these files come from the official AIST++ download")
    mapping, cameras = load_settings(args.root / "cameras", args.unit_m)
    videos_dir = args.videos or args.root / "videos"
    ignore_path = args.root / "ignore_list.txt"
    ignored = set(ignore_path.read_text().split()) if ignore_path.is_file() else set()
    sequences, missing_videos = {}, 0
    for path in sorted((args.root / "keypoints3d").glob("*.pkl")):
        name = path.stem
        if name in ignored:
            continue
        if name not in mapping:
            raise ValueError(f"{path.name}: sequence {name} has no camera setting in "
                             f"{args.root / 'cameras' / 'mapping.txt'}")
        videos = {view: videos_dir / f"{name.replace('cAll', view)}.mp4" for view in VIEWS}
        present = {view: video for view, video in videos.items() if video.is_file()}
        missing_videos += len(videos) - len(present)
        sequences[name] = (path, present)
    if not any(present for _, present in sequences.values()):
        raise FileNotFoundError(f"no AIST++ sequence with both keypoints ({args.root / 'keypoints3d'}/*.pkl) and "
                                f"videos ({videos_dir}/<sequence with cAll -> c01..c09>.mp4)")
    splits, unreadable = {}, []
    for split, chosen in split_by_name(sequences, args.val, "sequence").items():
        items = []
        for keypoints3d, present in chosen:
            name = keypoints3d.stem
            try:
                frame_count = len(load_keypoints(keypoints3d)["keypoints3d_optim"])
            except SkipSample:
                unreadable.append(name)
                continue
            for number, window in enumerate(windows(range(frame_count), args.times, args.stride)):
                key = f"{name}-{number:06d}"
                views = choose_cameras(sorted(present), args.cameras, key)
                items.append({"key": key, "subject": name.split("_")[3], "frame_indices": list(window),
                              "video_fps": args.video_fps, "videos": {view: present[view] for view in views},
                              "cameras": {view: cameras[mapping[name]][view] for view in views},
                              "keypoints2d": args.root / "keypoints2d" / f"{name}.pkl", "keypoints3d": keypoints3d})
        splits[split] = items
    extra = {"keypoints": list(COCO_KEYPOINTS), "lens_distortion": "ignored: K is the pinhole part",
             "ignored_sequences": sorted(ignored & {p.stem for p in (args.root / "keypoints3d").glob("*.pkl")}),
             "missing_videos": missing_videos, "unreadable_sequences": unreadable}
    return run_pair_conversion(args, "aist", splits, functools.partial(encode_aist_group, unit_m=args.unit_m),
                               extra=extra, settings=settings)
