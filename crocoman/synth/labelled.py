"""Write labelled synthetic shards for fine-tuning (the format: ``datamodules.format``).

A sample is one crop: a person (task "body") or a bare hand (task "hand") with every label the
fine-tuning tasks read, all exact because they come from the geometry that was rendered:
keypoints with self-occlusion, body-model parameters and vertices that match the generated
model files (`bodymodel.py`), DensePose IUV for bodies and a gesture class for hands. Samples
are rendered and written like pair shards (`shards.write_sample_shards`): the bytes depend on
the seed and sizes only, never on the number of workers.
"""

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from body.layouts import (
    DENSEPOSE_PART_NAMES,
    HAND_KEYPOINT_NAMES,
    HAND_KEYPOINT_PARENTS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
)
from crocoman.checks import check_at_least
from crocoman.synth.bodymodel import mesh_template
from crocoman.synth.hand import GESTURE_NAMES, HAND_PRIMITIVE_JOINTS, render_hand
from crocoman.synth.render import hidden_from, primitive_local_coords
from crocoman.synth.shards import (
    manifest_splits,
    save_manifest,
    split_indices,
    total_bytes,
    write_sample_shards,
)
from crocoman.synth.surface import cylindrical_coords, surface_vertices
from crocoman.synth.world import PRIMITIVE_JOINTS, PRIMITIVE_PARTS, Frame, render_group
from datamodules.format import (
    CLASS_KEY,
    IUV_KEY,
    SYNTH_LABELLED_VERSION,
    LabelledMeta,
    TarSample,
    has_flags,
    pack_labelled,
    png_bytes,
)

SHARD_PATTERN = "labelled-%06d.tar"
TASKS = ("body", "hand")

_DP = {name: index + 1 for index, name in enumerate(DENSEPOSE_PART_NAMES)}
# Our primitive parts -> DensePose ids. Split parts take their first id on the back (or, for the
# head and neck, the person's right) and the second on the front (left), by the side of the
# primitive's axis the pixel lies on. The neck has no DensePose part of its own and joins the
# head, as does the hair; pelvis, abdomen and chest make up the torso.
_FRONT, _LEFT = 1, 0  # the cylindrical coordinate whose sign splits: across_2 (forward), across_1 (left)
_DENSEPOSE = {
    "pelvis": ("torso_back", "torso_front", _FRONT),
    "abdomen": ("torso_back", "torso_front", _FRONT),
    "chest": ("torso_back", "torso_front", _FRONT),
    "neck": ("head_right", "head_left", _LEFT),
    "head": ("head_right", "head_left", _LEFT),
    "hair": ("head_right", "head_left", _LEFT),
    **{
        f"{side}_{part}": (f"{dp_part}_{side}_back", f"{dp_part}_{side}_front", _FRONT)
        for side in ("left", "right")
        for part, dp_part in (
            ("upper_arm", "upper_arm"), ("forearm", "lower_arm"), ("thigh", "upper_leg"), ("calf", "lower_leg")
        )
    },
    **{
        f"{side}_{part}": (f"{side}_{part}", f"{side}_{part}", _FRONT)
        for side in ("left", "right")
        for part in ("hand", "foot")
    },
}  # fmt: skip
# Per primitive (capsules first): DensePose id on the negative and on the positive side, split axis.
_PRIMITIVE_DENSEPOSE = torch.tensor(
    [[_DP[negative], _DP[positive], split] for negative, positive, split in map(_DENSEPOSE.get, PRIMITIVE_PARTS)]
)


def densepose_iuv(frame: Frame) -> np.ndarray:
    """(H, W, 3) uint8: DensePose part id (0 background, 1..24), then U (angle around the
    primitive's axis) and V (height along it) scaled to 0..255; U = V = 0 on the background."""
    rendering, scene = frame.rendering, frame.scene
    size = rendering.primitive.shape[0]
    rows, cols = torch.nonzero(rendering.primitive >= 0, as_tuple=True)
    primitive = rendering.primitive[rows, cols]
    depth_m = rendering.depth_m[rows, cols]
    pixels = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).to(torch.float32)
    points_cam_m = depth_m[:, None] * pixels @ torch.linalg.inv(frame.K).T
    points_world_m = (points_cam_m - frame.t) @ frame.R
    local_m = primitive_local_coords(points_world_m, primitive, scene)
    angle_rad, height = cylindrical_coords(local_m, primitive, scene.capsules, scene.ellipsoids)
    negative_id, positive_id, split = _PRIMITIVE_DENSEPOSE[primitive].unbind(-1)
    across = torch.stack([torch.cos(angle_rad), torch.sin(angle_rad)], dim=-1)
    positive = across.gather(1, split[:, None])[:, 0] > 0
    iuv = torch.zeros(size, size, 3, dtype=torch.uint8)
    iuv[rows, cols, 0] = torch.where(positive, positive_id, negative_id).to(torch.uint8)
    iuv[rows, cols, 1] = ((angle_rad + torch.pi) / (2 * torch.pi) * 255).round().to(torch.uint8)
    iuv[rows, cols, 2] = (height * 255).round().to(torch.uint8)
    return iuv.numpy()


def own_primitives(parents: tuple[int, ...], primitive_joints: tuple[int, ...]) -> torch.Tensor:
    """(K, P) bool: the primitives a keypoint belongs to: those riding it, a child, or its
    nearest ancestor that carries any (an elbow owns upper arm, forearm and hand; spine3, between
    abdomen and chest, owns both). They contain or touch it, so they cannot hide it."""
    riding = torch.tensor(primitive_joints)
    own = torch.zeros(len(parents), len(primitive_joints), dtype=torch.bool)
    for keypoint, parent in enumerate(parents):
        own[keypoint] |= riding == keypoint
        if parent >= 0:
            own[parent] |= riding == keypoint
        while parent >= 0 and not (riding == parent).any():
            parent = parents[parent]
        if parent >= 0:
            own[keypoint] |= riding == parent
    return own


def keypoint_visibility(frame: Frame, keypoints_2d_px: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(K,) 1.0 where a keypoint (pixel position (K, 2)) is in the crop and no primitive but its
    own (`own_primitives`) hides it from the camera, else 0.0."""
    keypoints_world_m = (frame.joints_3d_m - frame.t) @ frame.R
    size = frame.rendering.mask.shape[0]
    in_crop = ((keypoints_2d_px >= -0.5) & (keypoints_2d_px < size - 0.5)).all(-1)
    hidden = hidden_from(keypoints_world_m, -frame.R.T @ frame.t, frame.scene, own)
    return (in_crop & ~hidden).to(torch.float32)


_OWN_PRIMITIVES = {
    "smpl": own_primitives(SMPL_PARENTS, PRIMITIVE_JOINTS),
    "mano": own_primitives(HAND_KEYPOINT_PARENTS, HAND_PRIMITIVE_JOINTS),
}


def _labels(frame: Frame, body_model: str, vertices: bool) -> dict[str, torch.Tensor]:
    keypoints_3d_m = frame.joints_3d_m
    projected = keypoints_3d_m.double() @ frame.K.double().T  # from the stored float32 3D points
    keypoints_2d_px = (projected[:, :2] / projected[:, 2:]).float()
    visibility = keypoint_visibility(frame, keypoints_2d_px, _OWN_PRIMITIVES[body_model])
    labels = {
        "keypoints_2d": torch.cat([keypoints_2d_px, visibility[:, None]], dim=1),
        "keypoints_3d": torch.cat([keypoints_3d_m, torch.ones(len(keypoints_3d_m), 1)], dim=1),
        "global_orient": frame.body.global_orient,
        "body_pose" if body_model == "smpl" else "hand_pose": frame.body.pose,
        "betas": frame.body.betas,
        "transl": frame.body.transl,
    }
    if vertices:
        world_m = surface_vertices(mesh_template(body_model), frame.scene.capsules, frame.scene.ellipsoids)
        labels["vertices"] = world_m @ frame.R.T + frame.t
    return labels


def _meta(frame: Frame, task: str, subject: str) -> LabelledMeta:
    body = task == "body"
    return {
        "task": task,
        "K": frame.K.double().round(decimals=6).tolist(),
        "bbox": list(frame.bbox_px),
        "has": has_flags({"keypoints_2d", "keypoints_3d", *(("smpl", "densepose") if body else ("mano", "gesture"))}),
        "subject": subject,
        "body_model": "smpl" if body else "mano",
    }


def encode_labelled(index: int, seed: int, task: str, image_size: int, vertices: bool = True) -> TarSample:
    """Render labelled sample `index` of `task` as one tar sample (jpg, json, npz, and iuv.png
    for bodies or cls for hands); `vertices=False` leaves the mesh out of the npz."""
    if task == "body":
        group = render_group(seed, index, image_size, cameras=1, times=1)
        frame, subject, body_model = group.frames[0], group.subject, "smpl"
        task_labels = {IUV_KEY: png_bytes(densepose_iuv(frame))}
    else:
        hand = render_hand(seed, index, image_size)
        frame, subject, body_model = hand.frame, hand.subject, "mano"
        task_labels = {CLASS_KEY: str(hand.gesture).encode()}
    return pack_labelled(f"{task}{index:07d}", frame.rendering.rgb, _meta(frame, task, subject),
                         _labels(frame, body_model, vertices), task_labels)


def write_labelled_shards(
    out_dir: str | Path,
    num_samples: int,
    task: str,
    image_size: int = 128,
    seed: int = 0,
    workers: int = 1,
    samples_per_shard: int = 200,
    val_samples: int = 0,
    vertices: bool = True,
) -> dict:
    """Render `num_samples` train (and `val_samples` validation) crops of `task` ("body" or
    "hand") into `out_dir/{train,val}/labelled-%06d.tar` and return the manifest also written to
    `out_dir/manifest.json`; it names the keypoints, the DensePose parts and, for hands, the
    gesture classes in `cls` order, so readers never hard-code them.

    `vertices=False` stores no mesh vertices: they are most of a sample's bytes (a body's 6890 x 3
    floats), and modules with a body model recompute them from the stored parameters."""
    if task not in TASKS:
        raise ValueError(f"write_labelled_shards: task={task!r}, expected one of {TASKS}")
    check_at_least(
        "write_labelled_shards", num_samples=(num_samples, 1), image_size=(image_size, 16), workers=(workers, 1),
        samples_per_shard=(samples_per_shard, 1), val_samples=(val_samples, 0),
    )  # fmt: skip
    out = Path(out_dir)
    started = time.perf_counter()
    job = partial(encode_labelled, seed=seed, task=task, image_size=image_size, vertices=vertices)
    splits = split_indices(num_samples, val_samples)
    shards = write_sample_shards(
        out, splits, job, workers, samples_per_shard, SHARD_PATTERN, desc="labelled", unit="sample"
    )
    seconds = time.perf_counter() - started
    body = task == "body"
    manifest = {
        "version": SYNTH_LABELLED_VERSION,
        "task": task,
        "seed": seed,
        "image_size": image_size,
        "samples_per_shard": samples_per_shard,
        "body_model": "smpl" if body else "mano",
        "vertices": vertices,
        "keypoints": list(SMPL_JOINT_NAMES if body else HAND_KEYPOINT_NAMES),
        **({"densepose_parts": list(DENSEPOSE_PART_NAMES)} if body else {"classes": list(GESTURE_NAMES)}),
        "splits": manifest_splits(shards, {split: {"samples": len(indices)} for split, indices in splits.items()},
                                  "samples"),
        "total_bytes": total_bytes(shards),
        "generation_seconds": round(seconds, 2),
    }
    total = num_samples + val_samples
    return save_manifest(out, manifest, f"labelled: {num_samples} train + {val_samples} val {task} samples of "
                                        f"{image_size} px ({total / seconds:.1f} samples/s, {workers} workers)")

