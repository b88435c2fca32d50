"""3DPW -> labelled body shards (task "body", SMPL), one sample per actor and frame.

Layout (https://virtualhumans.mpi-inf.mpg.de/3DPW): `imageFiles/<seq>/image_%05d.jpg` and
`sequenceFiles/{train,validation,test}/<seq>.pkl` (Python 2 pickles: `genders`, `betas`,
`poses` (frames, 72), `trans`, `jointPositions` (frames, 72), `poses2d` (frames, 3, 18),
`cam_poses` (frames, 4, 4, world -> camera), `cam_intrinsics`, `campose_valid`). Splits become
train / val / test. Unpickling can run code from a file, so it needs `--trust-pickle`, and even
then only numpy arrays and plain values are accepted (`datamodules.safe_pickle`).

SMPL parameters are moved into the camera frame so that `smplx.create(dir, "smpl",
gender=json.gender)(betas, global_orient, body_pose, transl)` gives camera-frame vertices: SMPL
rotates about its rest root joint J0(betas), hence `transl = R (J0 + trans) + t - J0`. J0 is the
model's when `--body-model-dir` is given (then `vertices` are stored too), else the dataset's own
(`jointPositions` root minus `trans`: the posed root is J0 + trans). `keypoints_3d` are the 24
SMPL joints in the camera, `keypoints_2d` their projection (confidence: in front of the camera and
inside the image), both in SMPL order as the mesh losses expect; the dataset's OpenPose detections
are kept as `keypoints_2d_detected` (COCO-18 order, `manifest.keypoints_detected`). Frames whose
camera pose was not aligned (`campose_valid` 0) are skipped and counted.
"""

import argparse
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from body.layouts import SMPL_JOINT_NAMES
from body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from crocoman.convert.common import SkipSample, read_image, run_conversion, transform_points
from crocoman.convert.labelled import cached_body_model, crop_projected, draw_labelled, labelled_sample, load_body_model
from datamodules import safe_pickle

SPLITS = {"train": "train", "validation": "val", "test": "test"}  # 3DPW folder -> our split
# OpenPose's COCO-18 order of `poses2d`.
COCO18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye",
    "right_ear", "left_ear",
)  # fmt: skip
GENDERS = {"m": "male", "f": "female"}
_REQUIRED_KEYS = ("sequence", "genders", "betas", "poses", "trans", "jointPositions", "poses2d", "cam_poses",
                  "cam_intrinsics", "campose_valid")


@dataclass(frozen=True)
class ActorFrame:
    """Everything one sample needs, as plain tuples (a stable repr fingerprints the shard)."""

    key: str
    image: Path
    subject: str
    gender: str
    camera_valid: bool
    K: tuple  # 3x3
    cam_pose: tuple  # 4x4 world -> camera
    poses: tuple  # 72 axis-angle: global orientation (world), 23 body joints
    betas: tuple  # 10
    trans: tuple  # 3, world
    joints_world: tuple  # 24 x 3
    detections: tuple  # 18 x 3 (x, y, confidence)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling 3DPW's sequence files (a pickle can run code: only for files you trust)")
    parser.add_argument("--body-model-dir", type=Path,
                        help="folder with smpl/SMPL_{MALE,FEMALE}.{npz,pkl} (smplx layout): also store vertices")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=sorted(SPLITS),
                        help="3DPW splits to convert")
    parser.add_argument("--frame-step", type=int, default=1, help="keep every N-th frame (3DPW runs at 30 fps)")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.2, help="crop margin around the joints, per side")


def load_sequence(path: Path) -> dict:
    """A 3DPW sequence pickle (Python 2, latin-1 strings), checked for the keys we read."""
    try:
        data = safe_pickle.load(path, f"3DPW sequence file ({path})", encoding="latin1")
    except safe_pickle.UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a readable 3DPW sequence file ({error!r}); download it again") from error
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a 3DPW sequence file, keys {missing} missing (has {sorted(data)})")
    return data


def sequence_frames(path: Path, root: Path, frame_step: int) -> list[ActorFrame]:
    """One `ActorFrame` per actor and kept frame of a sequence file."""
    data = load_sequence(path)
    sequence = str(data["sequence"])
    K = np.asarray(data["cam_intrinsics"], np.float64).tolist()
    frames = []
    for actor, gender in enumerate(data["genders"]):
        betas = np.asarray(data["betas"][actor], np.float64).reshape(-1)[:10]
        if len(betas) < 10:
            raise ValueError(f"{path}: actor {actor} has {len(betas)} betas, SMPL needs 10")
        poses, trans = np.asarray(data["poses"][actor]), np.asarray(data["trans"][actor])
        joints, detections = np.asarray(data["jointPositions"][actor]), np.asarray(data["poses2d"][actor])
        valid = np.asarray(data["campose_valid"][actor]).astype(bool)
        lengths = {len(poses), len(trans), len(joints), len(detections), len(valid), len(data["cam_poses"])}
        if len(lengths) != 1:
            raise ValueError(f"{path}: actor {actor}'s poses, trans, jointPositions, poses2d, campose_valid and "
                             f"cam_poses differ in length ({sorted(lengths)} frames)")
        for frame in range(0, len(poses), frame_step):
            frames.append(ActorFrame(
                key=f"{sequence}_a{actor}_f{frame:05d}",
                image=root / "imageFiles" / sequence / f"image_{frame:05d}.jpg",
                subject=f"3dpw/{sequence}/{actor}", gender=GENDERS.get(gender, "neutral"),
                camera_valid=bool(valid[frame]), K=tuple(map(tuple, K)),
                cam_pose=tuple(map(tuple, np.asarray(data["cam_poses"][frame], np.float64).tolist())),
                poses=tuple(poses[frame].tolist()), betas=tuple(betas.tolist()), trans=tuple(trans[frame].tolist()),
                joints_world=tuple(map(tuple, joints[frame].reshape(24, 3).tolist())),
                detections=tuple(map(tuple, detections[frame].T.tolist())),
            ))  # fmt: skip
    return frames


def camera_frame_parameters(frame: ActorFrame, rest_root_m: np.ndarray) -> dict[str, np.ndarray]:
    """global_orient and transl in the camera (see the module docstring), body_pose and betas."""
    cam_pose = np.asarray(frame.cam_pose, np.float64)
    rotation, translation = cam_pose[:3, :3], cam_pose[:3, 3]
    poses = torch.tensor(frame.poses, dtype=torch.float64)
    orient = matrix_to_axis_angle(torch.from_numpy(rotation) @ axis_angle_to_matrix(poses[:3])).numpy()
    transl = rotation @ (rest_root_m + np.asarray(frame.trans)) + translation - rest_root_m
    return {"global_orient": orient, "body_pose": poses[3:].numpy(), "betas": np.asarray(frame.betas),
            "transl": transl}


def encode_frame(frame: ActorFrame, size: int, margin: float, body_model_dir: str | None) -> dict:
    """One actor in one frame -> a labelled body crop (see the module docstring)."""
    if not frame.camera_valid:
        raise SkipSample("camera pose not aligned", f"{frame.key}: campose_valid is 0")
    joints_world = np.asarray(frame.joints_world, np.float64)
    if body_model_dir is None:
        rest_root_m = joints_world[0] - np.asarray(frame.trans)
        params = camera_frame_parameters(frame, rest_root_m)
        cam_pose = np.asarray(frame.cam_pose, np.float64)
        keypoints_3d = joints_world @ cam_pose[:3, :3].T + cam_pose[:3, 3]
        vertices = None
    else:
        model = cached_body_model(body_model_dir, "smpl", frame.gender)
        with torch.no_grad():
            rest_root_m = model(betas=torch.tensor([frame.betas], dtype=torch.float32)).joints[0, 0].double().numpy()
            params = camera_frame_parameters(frame, rest_root_m)
            output = model(**{name: torch.from_numpy(value).float()[None] for name, value in params.items()})
        keypoints_3d, vertices = output.joints[0, :24].double().numpy(), output.vertices[0].numpy()
    image = read_image(frame.image)
    K = np.asarray(frame.K, np.float64)
    crop, affine, crop_keypoints, bbox = crop_projected(image, keypoints_3d, K, size, margin, key=frame.key,
                                                        min_in_view=4)
    arrays = {"keypoints_2d": crop_keypoints,
              "keypoints_3d": np.concatenate([keypoints_3d, np.ones((24, 1))], axis=1),
              **params, "keypoints_2d_detected": transform_points(affine, np.asarray(frame.detections))}
    if vertices is not None:
        arrays["vertices"] = vertices
    return labelled_sample(frame.key, crop, task="body", K=affine @ K, bbox=bbox,
                           has={"keypoints_2d", "keypoints_3d", "smpl"}, subject=frame.subject, body_model="smpl",
                           arrays=arrays, record={"gender": frame.gender})


def convert(args: argparse.Namespace) -> dict:
    """Every actor and kept frame of the chosen splits -> `args.out/{train,val,test}/3dpw-*.tar`."""
    folder = args.root / "sequenceFiles"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: --root must be the 3DPW folder holding imageFiles/ and "
                                f"sequenceFiles/ (https://virtualhumans.mpi-inf.mpg.de/3DPW)")
    if not args.trust_pickle:
        raise PermissionError(f"3DPW's sequence files ({folder}/*/*.pkl) are pickles, and unpickling can run code: "
                              f"pass --trust-pickle if they come from the official download")
    if args.body_model_dir is not None:
        for gender in GENDERS.values():  # fail now, not in every worker
            load_body_model(args.body_model_dir, "smpl", gender)
    splits = {}
    for name in args.splits:
        paths = sorted((folder / name).glob("*.pkl"))
        if not paths:
            raise FileNotFoundError(f"no sequence files in {folder / name}; choose the splits you have with --splits")
        splits[SPLITS[name]] = [frame for path in paths for frame in sequence_frames(path, args.root, args.frame_step)]
    body_model_dir = None if args.body_model_dir is None else str(args.body_model_dir)
    encode = partial(encode_frame, size=args.size, margin=args.margin, body_model_dir=body_model_dir)
    settings = {"size": args.size, "margin": args.margin, "frame_step": args.frame_step,
                "vertices": body_model_dir is not None}
    extra = {"task": "body", "body_model": "smpl", "keypoints": list(SMPL_JOINT_NAMES),
             "keypoints_detected": list(COCO18_NAMES)}
    return run_conversion(args, "threedpw", splits, encode, shard_prefix="3dpw", draw=draw_labelled, extra=extra,
                          settings=settings)
