"""What the DataModules hand the LightningModules: one decoded sample (``*Item``, out of a loader worker's map
stage) and the collated batch (``*Batch``), where every tensor gains a leading batch dimension B, ``has``
holds (B,) bools and ``key`` becomes a list.

Images leave the workers as uint8 (3, S, S) and ``ShardDataModule.on_after_batch_transfer`` makes them float in
[0, 1] on the batch's device; ``<image>_jitter`` (8 numbers: ``datamodules.color.draw_jitter``) is present only
when the colour jitter runs there, which consumes it. Out of a worker a batch also carries its skip counts
(``datamodules.health.SKIPPED_KEY``), taken off before the transfer. Hints only: nothing checks them at run time.
"""

from typing import Generic, NotRequired, Required, TypedDict, TypeVar

from torch import Tensor

from datamodules.format.schema import LabelArrays

Key = TypeVar("Key", str, list[str])  # one sample's tar key, or a batch's
MESH_HAS_KEYS = ("keypoints_2d", "keypoints_3d", "params", "vertices", "transl")  # ``has``; params: pose, betas


class PairFields(TypedDict, Generic[Key]):
    """A pretraining pair (``PairDataModule``): two crops of one person, ``person1`` the silhouette (or box) of
    image 1 on its pixels (S, S) bool, ``pair_type`` one of ``schema.CROSS_VIEW``, ``CROSS_POSE``,
    ``SINGLE_IMAGE`` (image 2 blank)."""

    key: Key
    image1: Tensor
    image2: Tensor
    person1: Tensor
    pair_type: Tensor
    image1_jitter: NotRequired[Tensor]
    image2_jitter: NotRequired[Tensor]


class LabelledFields(LabelArrays[Tensor], Generic[Key], total=False):
    """A labelled crop (``LabelledDataModule``) with the labels its ``label_keys`` ask for: ``label`` (class id)
    for ``cls``; ``K`` (3, 3) of the input and the json's ``has`` flags for ``json``; every array of the
    ``npz`` under its own name, ``keypoints_2d`` in input pixels; ``iuv`` (3, S, S) uint8 for ``iuv.png``."""

    key: Required[Key]
    image: Required[Tensor]
    image_jitter: Tensor
    label: Tensor
    K: Tensor
    has: dict[str, Tensor]
    iuv: Tensor


class MeshFields(LabelArrays[Tensor], Generic[Key]):
    """A person crop for mesh recovery (``MeshDataModule``), every label at its shape whether labelled or not
    (zeros, with its ``MESH_HAS_KEYS`` flag False): ``K`` (3, 3) of the input after augmentation,
    ``keypoints_2d`` (J, 3) input pixels + confidence (0 outside the input), ``keypoints_3d`` (J, 4),
    ``global_orient`` (3,) in the camera frame, ``body_pose`` (smpl, smplx) or ``hand_pose`` (mano), ``betas``
    (10,), ``transl`` (3,), ``vertices`` (V, 3) camera metres."""

    key: Key
    image: Tensor
    K: Tensor
    has: dict[str, Tensor]
    image_jitter: NotRequired[Tensor]


PairItem, PairBatch = PairFields[str], PairFields[list[str]]
LabelledItem, LabelledBatch = LabelledFields[str], LabelledFields[list[str]]
MeshItem, MeshBatch = MeshFields[str], MeshFields[list[str]]
Item = PairItem | LabelledItem | MeshItem
Batch = PairBatch | LabelledBatch | MeshBatch
