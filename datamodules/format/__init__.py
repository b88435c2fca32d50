"""The shard format in code: what writers (``crocoman.synth``, ``crocoman.convert``) put in a tar and what
readers (this package's DataModules) take out of it, in one place both import.

- ``schema``: member keys, manifest versions, label flags, and the records the JSON members hold;
- ``codec``: bytes from images, records and arrays (one JPEG quality for every writer), and back;
- ``geometry``: crop boxes and the map from source to crop pixels that moves keypoints and intrinsics;
- ``batches``: what a DataModule hands a LightningModule, one sample and collated.
"""

from datamodules.format.batches import (
    MESH_HAS_KEYS,
    Batch,
    Item,
    LabelledBatch,
    LabelledItem,
    MeshBatch,
    MeshItem,
    PairBatch,
    PairItem,
)
from datamodules.format.codec import (
    JPEG_QUALITY,
    has_flags,
    jpeg_bytes,
    json_bytes,
    labelled_arrays,
    labelled_meta,
    npz_bytes,
    pack_labelled,
    png_bytes,
    read_group,
)
from datamodules.format.geometry import Box, crop_affine, map_points
from datamodules.format.schema import (
    ARRAYS_KEY,
    CLASS_KEY,
    CONVERT_VERSION,
    CROSS_POSE,
    CROSS_VIEW,
    GROUP_KEY,
    HAS_FLAGS,
    IMAGE_KEY,
    IUV_KEY,
    LABEL_KEYS,
    MANIFEST,
    META_KEY,
    SINGLE_IMAGE,
    SYNTH_LABELLED_VERSION,
    SYNTH_PAIRS_VERSION,
    UNLABELLED,
    FrameRecord,
    GroupRecord,
    LabelArrays,
    LabelledMeta,
    TarSample,
    frame_members,
)

__all__ = [
    "ARRAYS_KEY", "CLASS_KEY", "CONVERT_VERSION", "CROSS_POSE", "CROSS_VIEW", "GROUP_KEY", "HAS_FLAGS", "IMAGE_KEY",
    "IUV_KEY", "JPEG_QUALITY", "LABEL_KEYS", "MANIFEST", "MESH_HAS_KEYS", "META_KEY", "SINGLE_IMAGE",
    "SYNTH_LABELLED_VERSION", "SYNTH_PAIRS_VERSION", "UNLABELLED", "Batch", "Box", "Item", "FrameRecord", "GroupRecord",
    "LabelArrays", "LabelledBatch", "LabelledItem", "LabelledMeta", "MeshBatch", "MeshItem", "PairBatch", "PairItem",
    "TarSample", "crop_affine", "frame_members", "has_flags", "jpeg_bytes", "json_bytes", "labelled_arrays",
    "labelled_meta", "map_points", "npz_bytes", "pack_labelled", "png_bytes", "read_group",
]
