"""Reading the training tars of 4D-Humans (HMR 2.0) and HaMeR into crocoman's person records.

Their layout (``hmr2/datasets/image_dataset.py``, ``hamer/datasets/image_dataset.py``, method
``load_tars_as_webdataset``): one tar sample per image with the image (``jpg``, or ``jpeg`` /
``png``) and ``data.pyd``, a *pickled list* with one label dict per person:

- ``center`` (2,) and ``scale`` (2,): the person box, centre in pixels and size in units of 200 px;
  the crop is the square of side ``max(scale) * 200`` around the centre (their ``BBOX_SHAPE``
  aspect padding is not applied).
- ``keypoints_2d`` (J, 3): pixels of the full image + confidence; ``keypoints_3d`` (J, 4): metres,
  camera-aligned axes, relative to the body (their loss is root-aligned) + confidence.
- bodies: ``body_pose`` (72,) = camera-frame global orientation then SMPL's 23 joints, ``betas``
  (10,), ``has_body_pose``, ``has_betas``; J = 44 (``HMR_BODY_KEYPOINTS``: OpenPose BODY_25,
  then the 19 LSP/MPII/H36M joints of SPIN).
- hands: ``hand_pose`` (48,) = global orientation then MANO's 15 joints, ``has_hand_pose``,
  ``betas``, ``has_betas``, ``right`` (0 for a left hand); J = 21 (``HAMER_HAND_KEYPOINTS``,
  OpenPose hand order). MANO here is right-handed, so left hands are mirrored into right hands,
  as HaMeR does.

Camera: both projects fix the focal length at 5000 px for a 256 px crop and put the principal
point at the crop centre. The record's ``K`` is that camera expressed in the full image's pixels
(focal ``5000 / 256 * side``, principal point at the box centre), so the crop and every
augmentation act on it like on any calibrated camera. The missing depth of ``keypoints_3d`` is
recovered as the translation that best projects them onto ``keypoints_2d`` with this ``K``
(linear least squares), which makes them camera-frame points; SMPL's ``transl`` stays unknown.

``data.pyd`` is a pickle, and unpickling can run whatever code the file names: it is read only with
an explicit ``trust_pickle=True``, and even then only numpy arrays and plain values are accepted
(``datamodules.safe_pickle``).
"""

import numpy as np
import torch
from torch import Tensor

from datamodules import safe_pickle

HMR_BODY_KEYPOINTS = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
    "right_small_toe", "right_heel",
    "lsp_right_ankle", "lsp_right_knee", "lsp_right_hip", "lsp_left_hip", "lsp_left_knee", "lsp_left_ankle",
    "lsp_right_wrist", "lsp_right_elbow", "lsp_right_shoulder", "lsp_left_shoulder", "lsp_left_elbow",
    "lsp_left_wrist", "lsp_neck", "lsp_head_top", "mpii_pelvis", "mpii_thorax", "h36m_spine", "h36m_jaw",
    "h36m_head",
)  # fmt: skip
HAMER_HAND_KEYPOINTS = ("wrist",) + tuple(
    f"{finger}{joint}" for finger in ("thumb", "index", "middle", "ring", "pinky") for joint in range(1, 5)
)
FOCAL_LENGTH_PX = 5000.0  # their focal length ...
FOCAL_CROP_PX = 256  # ... for a crop of this size
IMAGE_KEYS = ("jpg", "jpeg", "png")
PICKLE_KEY = "data.pyd"


def refuse_untrusted(trust_pickle: bool, where: str) -> None:
    """Stop before any pickle is read unless the user said the files are trusted."""
    if not trust_pickle:
        raise ValueError(f"{where} holds 4D-Humans/HaMeR labels as pickles ({PICKLE_KEY}); unpickling a file runs "
                         f"any code it names, so it is refused by default. If you trust these tars (e.g. you "
                         f"downloaded them from the projects' own links), set `trust_pickle: true`")


def load_people(sample: dict, trust_pickle: bool) -> list[dict]:
    """The per-person label dicts of one tar sample."""
    refuse_untrusted(trust_pickle, f"sample {sample.get('__key__')} of {sample.get('__url__', '?')}")
    people = safe_pickle.loads(sample[PICKLE_KEY], f"4D-Humans/HaMeR label file ({PICKLE_KEY})", encoding="latin1")
    if isinstance(people, dict):
        people = [people]
    if not people:
        raise ValueError(f"sample {sample.get('__key__')} of {sample.get('__url__', '?')}: {PICKLE_KEY} holds "
                         f"no person")
    return list(people)


def image_bytes(sample: dict) -> bytes:
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    raise KeyError(f"sample {sample.get('__key__')} of {sample.get('__url__', '?')} has no image "
                   f"({'/'.join(IMAGE_KEYS)})")


def depth_from_projection(points_m: Tensor, pixels: Tensor, weights: Tensor, K: Tensor) -> Tensor | None:
    """(3,) translation t with K (X + t) closest to the pixels (algebraic least squares, weighted), or None.

    Each point gives two equations linear in t: fx tx + (cx - u) tz = (u - cx) z - fx x, and the
    same for y; two points with both labels suffice.
    """
    valid = weights > 0
    if int(valid.sum()) < 2:
        return None
    x, y, z = points_m[valid].unbind(-1)
    u, v = pixels[valid].unbind(-1)
    w = weights[valid].sqrt()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zeros = torch.zeros_like(u)
    rows = torch.cat([torch.stack([fx.expand_as(u), zeros, cx - u], -1),
                      torch.stack([zeros, fy.expand_as(v), cy - v], -1)])
    targets = torch.cat([(u - cx) * z - fx * x, (v - cy) * z - fy * y])
    weight = torch.cat([w, w])[:, None]
    translation = torch.linalg.lstsq(rows * weight, targets[:, None] * weight).solution[:, 0]
    if not bool(((z + translation[2]) > 0).all()):
        return None  # behind the camera: the labels disagree with each other
    return translation


def _array(label: dict, name: str, shape: tuple[int, ...]) -> Tensor:
    value = torch.as_tensor(np.asarray(label[name], dtype=np.float64))
    if value.shape != shape:
        raise ValueError(f"{PICKLE_KEY} entry {name!r} has shape {tuple(value.shape)}, expected {shape}")
    return value


def hmr_person(sample: dict, label: dict, hand: bool, focal_length_px: float = FOCAL_LENGTH_PX) -> dict:
    """One person of a 4D-Humans (``hand=False``) or HaMeR (``hand=True``) sample as a person record
    (keys as in ``datamodules.mesh``: jpg, K, box, keypoints, parameters, has, mirror)."""
    num_keypoints = len(HAMER_HAND_KEYPOINTS if hand else HMR_BODY_KEYPOINTS)
    center = _array(label, "center", (2,))
    side = float(np.max(label["scale"])) * 200.0
    if not side > 1:
        raise ValueError(f"{PICKLE_KEY} person box of {side:.2f} px: too small to crop")
    focal = focal_length_px / FOCAL_CROP_PX * side
    K = torch.tensor([[focal, 0.0, float(center[0])], [0.0, focal, float(center[1])], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    keypoints_2d = _array(label, "keypoints_2d", (num_keypoints, 3))
    keypoints_3d = _array(label, "keypoints_3d", (num_keypoints, 4))
    weights = keypoints_2d[:, 2].clamp_min(0) * keypoints_3d[:, 3].clamp_min(0)
    translation = depth_from_projection(keypoints_3d[:, :3], keypoints_2d[:, :2], weights, K)
    if translation is not None:
        keypoints_3d[:, :3] += translation
    pose_name = "hand_pose" if hand else "body_pose"
    full_pose = _array(label, pose_name, (48 if hand else 72,))
    has_pose = bool(np.asarray(label.get(f"has_{pose_name}", 0)) > 0)
    has_betas = bool(np.asarray(label.get("has_betas", 0)) > 0)
    return {
        "jpg": image_bytes(sample),
        "K": K,
        "box": (float(center[0]), float(center[1]), side),
        "body_model": "mano" if hand else "smpl",
        "keypoints_2d": keypoints_2d,
        "keypoints_3d": keypoints_3d,
        "global_orient": full_pose[:3],
        "pose": full_pose[3:],
        "betas": _array(label, "betas", (10,)),
        "has": {
            "keypoints_2d": bool((keypoints_2d[:, 2] > 0).any()),
            "keypoints_3d": translation is not None,
            "params": has_pose and has_betas,
            "vertices": False,
            "transl": False,
        },
        "mirror": hand and not bool(np.asarray(label.get("right", 1)) > 0),
    }


def is_hmr_sample(member_names: list[str]) -> bool:
    """Whether tar member names (``key.ext``) are in the 4D-Humans/HaMeR layout."""
    return any(name.endswith("." + PICKLE_KEY) for name in member_names)

