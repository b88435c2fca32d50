"""What a shard holds, by name: member keys, manifest versions, label flags, and the records of the JSON members.

A tar *sample* is the members sharing one ``__key__``. Pair shards (pretraining) hold one group of frames of
one person a sample: ``group.json`` (a ``GroupRecord``) and per frame ``fN.jpg`` and optionally
``fN.mask.png``. Labelled shards (fine-tuning) hold one person crop a sample: ``jpg``, ``json`` (a
``LabelledMeta``), and as present ``npz`` (``LabelArrays``), ``iuv.png`` (DensePose part id, U, V as uint8) and
``cls`` (a gesture id as text). A shard folder's ``manifest.json`` names what the samples share (keypoint
order, classes, body model, counts).
"""

from typing import Generic, NotRequired, TypedDict, TypeVar

import numpy as np
from torch import Tensor

TarSample = dict[str, bytes | str]  # as webdataset reads and writes it: members' bytes, ``__key__`` (``__url__``)
MANIFEST = "manifest.json"

# Pair shards
GROUP_KEY = "group.json"
SYNTH_PAIRS_VERSION = "crocoman-synth-pairs/1"
CROSS_VIEW, CROSS_POSE, SINGLE_IMAGE = 0, 1, 2  # pair_type of a batch (lightning_modules.PAIR_TYPES names them)


def frame_members(number: int) -> tuple[str, str]:
    """The members of frame ``number`` of a group: its JPEG crop and its silhouette PNG."""
    return f"f{number}.jpg", f"f{number}.mask.png"


class FrameRecord(TypedDict):
    """One frame in ``group.json``: member names, camera and time (pairs are drawn from these), the camera of
    the stored crop (OpenCV, metres: ``X_cam = R X_world + t``), and what is known of the person in it."""

    name: str  # the JPEG member
    camera: str
    time: int
    K: list[list[float]]
    R: list[list[float]]
    t: list[float]
    mask: NotRequired[str]  # the silhouette member (white = person)
    bbox: NotRequired[list[float]]  # x, y, w, h in crop pixels
    joints_2d: NotRequired[list[list[float]]]  # (J, 2) synthetic, (J, 3) + confidence converted
    joints_3d: NotRequired[list[list[float]]]  # (J, 3) synthetic, (J, 4) + confidence converted; camera metres


class GroupRecord(TypedDict):
    """``group.json``; a converter may add fields of its dataset (the video converter's ``intrinsics``)."""

    subject: str
    frames: list[FrameRecord]


# Labelled shards
IMAGE_KEY, META_KEY, ARRAYS_KEY, IUV_KEY, CLASS_KEY = "jpg", "json", "npz", "iuv.png", "cls"
LABEL_KEYS = (CLASS_KEY, META_KEY, ARRAYS_KEY, IUV_KEY)  # what a reader may ask for beside the image
SYNTH_LABELLED_VERSION = "crocoman-synth-labelled/1"
CONVERT_VERSION = "crocoman-convert/1"  # every converter's manifest, pair and labelled
HAS_FLAGS = ("keypoints_2d", "keypoints_3d", "smpl", "mano", "densepose", "gesture")  # every json's ``has``, in order
UNLABELLED = 255  # iuv.png part channel: 0 background, 1..NUM_PARTS DensePose parts, 255 no label


class LabelledMeta(TypedDict):
    """The ``json`` member. ``K`` is the crop's intrinsics; ``has`` holds every flag of ``HAS_FLAGS``, and
    losses are masked by them, so partial labels are normal."""

    task: str  # body or hand
    K: list[list[float]]
    bbox: list[float]  # x, y, w, h in crop pixels
    has: dict[str, bool]
    subject: str
    body_model: str  # smpl or mano: the model the parameters and vertices belong to
    gender: NotRequired[str]  # 3DPW


Array = TypeVar("Array", np.ndarray, Tensor)


class LabelArrays(TypedDict, Generic[Array], total=False):
    """The ``npz`` member's float32 arrays, as present (a converter may add its own, e.g. 3DPW's detections);
    on disk ``LabelArrays[np.ndarray]``, in samples and batches the same names hold tensors."""

    keypoints_2d: Array  # (J, 3) crop pixels + confidence
    keypoints_3d: Array  # (J, 4) camera metres + confidence
    global_orient: Array  # (3,) axis-angle, camera frame
    body_pose: Array  # (69,) SMPL, (63,) SMPL-X
    hand_pose: Array  # (45,) MANO
    betas: Array  # (10,) or more
    transl: Array  # (3,) metres
    vertices: Array  # (V, 3) camera metres
