"""Person crops with body/hand mesh labels for mesh recovery (HMR 2.0-style data and augmentation).

Every augmentation is a real camera change, so labels stay exact: in-plane rotation turns the
camera about its optical axis (3D keypoints, vertices, global orientation and translation rotate
with it; pixels move by the homography K R K^-1), a flip mirrors the camera frame (x -> -x, with
the left/right maps of ``body.mirror``), and scale, shift and "extreme crops" (a part of
the body, from its keypoints) only choose which square of that image becomes the network input,
which changes the intrinsics and nothing in 3D. The returned ``K`` is that of the final input,
so projecting ``keypoints_3d`` with it gives ``keypoints_2d``.

Sources: crocoman labelled shards (``json`` + ``npz``, ``datamodules.format``) or the 4D-Humans/HaMeR
tar layout (``datamodules.hmr_tars``). Both are first read into a *person record*, a dict with
``jpg`` (bytes), ``K`` (3, 3) source-pixel intrinsics, ``box`` (centre x, centre y, side) in source
pixels or None for the whole image, ``body_model`` the labels belong to, any of
``keypoints_2d``, ``keypoints_3d``, ``global_orient``, ``pose``, ``betas``, ``transl``,
``vertices``, the ``has`` flags and ``mirror`` (must be flipped, e.g. a left hand for MANO).
"""

import math
import tarfile
from dataclasses import dataclass
from functools import cached_property

import smplx
import torch
import torch.nn.functional as F
from torch import Tensor

from body.layouts import BODY_POSE_JOINTS, NUM_BETAS, SMPL_JOINT_NAMES
from body.mirror import mirror_axis_angle, mirror_permutation, mirror_pose, vertex_mirror_map
from datamodules.color import jittered
from datamodules.decode import decode_warp, image_size, to_tensor
from datamodules.format import (
    ARRAYS_KEY,
    IMAGE_KEY,
    META_KEY,
    MeshItem,
    TarSample,
    crop_affine,
    labelled_arrays,
    labelled_meta,
    map_points,
)
from datamodules.format import MESH_HAS_KEYS as HAS_KEYS
from datamodules.hmr_tars import (
    HAMER_HAND_KEYPOINTS,
    HMR_BODY_KEYPOINTS,
    hmr_person,
    is_hmr_sample,
    load_people,
    refuse_untrusted,
)
from datamodules.labelled import LabelledDataModule, find_manifest
from datamodules.shards import expand_shards

SOURCE_FORMATS = ("crocoman", "hmr_tars")
_MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))


@dataclass(frozen=True)
class BodyModelSpec:
    """What the batch holds for one body model: the pose entry, its size, the vertex count, the root joint's
    keypoint name, and the joints the pose rotates (for mirroring; None: no left/right among them)."""

    pose_key: str
    pose_dim: int
    num_vertices: int
    root: str
    pose_joints: tuple[str, ...] | None


BODY_MODELS = {
    "smpl": BodyModelSpec("body_pose", 69, 6890, "pelvis", BODY_POSE_JOINTS["smpl"]),
    "smplx": BodyModelSpec("body_pose", 63, 10475, "pelvis", BODY_POSE_JOINTS["smplx"]),
    "mano": BodyModelSpec("hand_pose", 45, 778, "wrist", None),
}

# Extreme crops (EFT / HMR 2.0): the box of the visible keypoints whose names match, padded.
_HEAD = ("head", "nose", "eye", "ear", "jaw", "neck")
_LOWER_LEGS = ("knee", "ankle", "foot", "toe", "heel")
EXTREME_CROPS = {
    "upper_body": (lambda name: not any(part in name for part in _LOWER_LEGS), 1.1),
    "shoulders_up": (lambda name: any(part in name for part in _HEAD + ("shoulder", "collar", "thorax")), 1.2),
    "head": (lambda name: any(part in name for part in _HEAD), 1.3),
    "torso": (lambda name: any(part in name for part in ("shoulder", "collar", "thorax", "spine", "pelvis", "hip")),
              1.2),
}
_MIN_CROP_PX = 4.0


def detect_source_format(spec: str | list[str]) -> str:
    """``hmr_tars`` when the first shard's first members hold a ``data.pyd``, else ``crocoman``."""
    first = expand_shards(spec[0] if isinstance(spec, (list, tuple)) else spec)[0]
    if first.startswith("pipe:") or "://" in first:
        raise ValueError(f"cannot look inside remote shards ({first}) to tell their layout: set `source_format` "
                         f"to one of {SOURCE_FORMATS}")
    with tarfile.open(first) as tar:
        names = [member.name for _, member in zip(range(16), tar)]
    return "hmr_tars" if is_hmr_sample(names) else "crocoman"


def rotation_about_optical_axis(angle_rad: float) -> Tensor:
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    return torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def rotate_axis_angle_about_z(axis_angle: Tensor, angle_rad: float) -> Tensor:
    """R_z(angle) R(axis_angle) as axis-angle, through quaternions: exact at every angle, including the
    near-pi global orientations of people facing the camera upright."""
    angle = axis_angle.norm()
    axis = axis_angle / angle if angle > 0 else axis_angle.new_tensor([1.0, 0.0, 0.0])
    w1, v1 = torch.cos(angle / 2), axis * torch.sin(angle / 2)
    w2, v2 = math.cos(angle_rad / 2), axis_angle.new_tensor([0.0, 0.0, math.sin(angle_rad / 2)])
    w = w2 * w1 - torch.dot(v2, v1)
    v = w2 * v1 + w1 * v2 + torch.linalg.cross(v2, v1)
    if w < 0:  # the same rotation with angle <= pi
        w, v = -w, -v
    sin_half = v.norm()
    return v * (2 * torch.atan2(sin_half, w) / sin_half) if sin_half > 0 else torch.zeros_like(axis_angle)


def crocoman_person(sample: TarSample) -> dict:
    """A crocoman labelled-shard sample as a person record (labels its ``has`` flags deny are left out)."""
    meta = labelled_meta(sample)
    labels = {name: torch.from_numpy(array).double() for name, array in labelled_arrays(sample).items()}
    flags = meta.get("has", {})
    body_model = meta.get("body_model")
    pose = labels.get("body_pose", labels.get("hand_pose"))
    has_params = bool(flags.get(body_model)) and pose is not None and "global_orient" in labels and "betas" in labels
    return {
        "jpg": sample[IMAGE_KEY],
        "K": torch.tensor(meta["K"], dtype=torch.float64),
        "box": None,
        "body_model": body_model,
        **{name: labels[name] for name in ("keypoints_2d", "keypoints_3d", "global_orient", "betas", "transl",
                                           "vertices") if name in labels},
        **({"pose": pose} if pose is not None else {}),
        "has": {
            "keypoints_2d": bool(flags.get("keypoints_2d")) and "keypoints_2d" in labels,
            "keypoints_3d": bool(flags.get("keypoints_3d")) and "keypoints_3d" in labels,
            "params": has_params,
            "vertices": bool(flags.get("vertices", True)) and "vertices" in labels,
            "transl": has_params and "transl" in labels,
        },
        "mirror": False,
    }


@dataclass(frozen=True)
class CameraAugmentation:
    """One draw of the augmentations: box scale factor, box shift (fractions of its side), in-plane
    rotation, flip, and the extreme crop to apply (an index into the sampler's crops, or None)."""

    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    rotation_rad: float = 0.0
    flip: bool = False
    extreme_crop: int | None = None


class MeshSample:
    """One raw tar sample -> the mesh batch contract (a map stage; see ``MeshDataModule``)."""

    def __init__(self, body_model: str, keypoint_names: tuple[str, ...], source_format: str, image_size: int,
                 augment: bool, color_jitter: float, scale_factor: float, translation_factor: float,
                 rotation_deg: float, rotation_rate: float, flip_rate: float, extreme_crop_rate: float,
                 trust_pickle: bool = False, hmr_focal_length_px: float = 5000.0,
                 vertex_map: Tensor | None = None, jitter_on_device: bool = False) -> None:
        self.spec = BODY_MODELS[body_model]
        self.body_model = body_model
        self.keypoint_names = keypoint_names
        self.source_format = source_format
        self.image_size = image_size
        self.augment = augment
        self.scale_factor, self.translation_factor = scale_factor, translation_factor
        self.rotation_deg, self.rotation_rate = rotation_deg, rotation_rate
        self.flip_rate, self.extreme_crop_rate = flip_rate, extreme_crop_rate
        self.trust_pickle = trust_pickle
        self.hmr_focal_length_px = hmr_focal_length_px
        self.vertex_map = vertex_map
        self.color_jitter = color_jitter
        self.jitter_on_device = jitter_on_device
        self.keypoint_mirror = mirror_permutation(keypoint_names)
        self.root = keypoint_names.index(self.spec.root) if self.spec.root in keypoint_names else None
        masks = [(torch.tensor([keep(name) for name in keypoint_names]), padding)
                 for keep, padding in EXTREME_CROPS.values()]
        self.extreme_crops = [(mask, padding) for mask, padding in masks if 2 <= int(mask.sum()) < len(mask)]

    def read(self, sample: TarSample) -> list[dict]:
        """The sample's person records. A 4D-Humans/HaMeR image may hold several people: augmented
        training takes a random one per visit, evaluation (and training without augmentation) all."""
        if self.source_format == "crocoman":
            return [crocoman_person(sample)]
        people = load_people(sample, self.trust_pickle)
        indices = [int(torch.randint(len(people), ()))] if self.augment else range(len(people))
        return [hmr_person(sample, people[index], hand=self.body_model == "mano",
                           focal_length_px=self.hmr_focal_length_px) | {"key": f"{sample['__key__']}/{index}"}
                for index in indices]

    def complete(self, record: dict, where: str) -> dict:
        """Every label at its batch shape: missing ones zero-filled with their flag False; shapes checked."""
        spec, num_keypoints = self.spec, len(self.keypoint_names)
        has = {name: bool(record["has"].get(name, False)) for name in HAS_KEYS}
        if record["body_model"] != self.body_model:  # another model's parameters and mesh mean nothing here
            has |= {"params": False, "vertices": False, "transl": False}
        shapes = {"keypoints_2d": (num_keypoints, 3), "keypoints_3d": (num_keypoints, 4), "global_orient": (3,),
                  "pose": (spec.pose_dim,), "betas": (NUM_BETAS,), "transl": (3,), "vertices": (spec.num_vertices, 3)}
        flag_of = {"keypoints_2d": "keypoints_2d", "keypoints_3d": "keypoints_3d", "global_orient": "params",
                   "pose": "params", "betas": "params", "transl": "transl", "vertices": "vertices"}
        person = {"K": record["K"], "box": record["box"], "mirror": record["mirror"], "has": has}
        for name, shape in shapes.items():
            if not has[flag_of[name]]:
                person[name] = torch.zeros(shape, dtype=torch.float64)
                continue
            value = record[name]
            if name == "betas":  # models are used with their first 10 shape coefficients
                value = F.pad(value[:NUM_BETAS], (0, max(0, NUM_BETAS - len(value))))
            if tuple(value.shape) != shape:
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, expected {shape} for "
                                 f"{self.body_model} with {num_keypoints} keypoints ({list(self.keypoint_names)[:4]}"
                                 f"...): fix `body_model`/`keypoint_names` or the shard")
            person[name] = value
        return person

    def draw(self, person: dict) -> CameraAugmentation:
        """Random augmentation parameters, HMR 2.0's distributions (clipped normals, per-kind rates)."""
        if not self.augment:
            return CameraAugmentation()

        def clipped(limit: float) -> float:
            return float(torch.randn(()).clamp(-limit, limit))

        rotate = float(torch.rand(())) < self.rotation_rate
        visible = person["keypoints_2d"][:, 2] > 0
        crops = [index for index, (mask, _) in enumerate(self.extreme_crops) if int((mask & visible).sum()) >= 2]
        extreme = bool(crops) and float(torch.rand(())) < self.extreme_crop_rate
        return CameraAugmentation(
            scale=1.0 + clipped(1.0) * self.scale_factor,
            shift=(clipped(1.0) * self.translation_factor, clipped(1.0) * self.translation_factor),
            rotation_rad=math.radians(clipped(2.0) * self.rotation_deg) if rotate else 0.0,
            flip=float(torch.rand(())) < self.flip_rate,
            extreme_crop=crops[int(torch.randint(len(crops), ()))] if extreme else None,
        )

    def crop_box(self, person: dict, width: int, height: int,
                 augmentation: CameraAugmentation) -> tuple[float, float, float]:
        """Centre and side of the square crop in source pixels (of a width x height image), before rotation and flip."""
        if person["box"] is None:
            cx, cy, side = (width - 1) / 2, (height - 1) / 2, float(max(height, width))
        else:
            cx, cy, side = person["box"]
        if augmentation.extreme_crop is not None:
            mask, padding = self.extreme_crops[augmentation.extreme_crop]
            points = person["keypoints_2d"][mask & (person["keypoints_2d"][:, 2] > 0), :2]
            low, high = points.min(0).values, points.max(0).values
            if float((high - low).max()) * padding >= _MIN_CROP_PX:
                (cx, cy), side = ((low + high) / 2).tolist(), float((high - low).max()) * padding
        cx, cy = cx + side * augmentation.shift[0], cy + side * augmentation.shift[1]
        return cx, cy, side * augmentation.scale

    def __call__(self, sample: TarSample) -> MeshItem | list[MeshItem]:
        """One network input per person of the tar sample: a dict, or a list of them (evaluation of
        an image of several people; ``shards.eval_loader`` takes each)."""
        samples = [self.person_sample(sample, record) for record in self.read(sample)]
        return samples[0] if len(samples) == 1 else samples

    def person_sample(self, sample: TarSample, record: dict) -> MeshItem:
        where = f"sample {sample['__key__']} of {sample.get('__url__', '?')}"
        person = self.complete(record, where)
        augmentation = self.draw(person)
        flip = augmentation.flip != person["mirror"]
        cx, cy, side = self.crop_box(person, *image_size(record["jpg"]), augmentation)

        # The camera change G (3D) and the image homography it induces, H = K G K^-1 (an affine map:
        # G keeps z). The crop is centred where the box centre went, so the person stays in view.
        camera = rotation_about_optical_axis(augmentation.rotation_rad) @ (_MIRROR if flip else torch.eye(3).double())
        K = person["K"]
        homography = K @ camera @ torch.linalg.inv(K)
        centre_x, centre_y, _ = (homography @ torch.tensor([cx, cy, 1.0], dtype=torch.float64)).tolist()
        to_input = crop_affine((centre_y - side / 2 + 0.5, centre_x - side / 2 + 0.5, side, side), self.image_size)
        affine = to_input @ homography

        out = {"key": record.get("key", sample["__key__"])}
        pixels = decode_warp(record["jpg"], affine, self.image_size)
        if self.augment:
            pixels = jittered(pixels, self.color_jitter, self.jitter_on_device, out, "image")

        has = person["has"]
        order = self.keypoint_mirror if flip else list(range(len(self.keypoint_names)))
        keypoints_2d = person["keypoints_2d"].clone()
        keypoints_2d[:, :2] = map_points(affine, keypoints_2d[:, :2])
        inside = ((keypoints_2d[:, :2] >= -0.5) & (keypoints_2d[:, :2] <= self.image_size - 0.5)).all(-1)
        keypoints_2d[:, 2] *= inside
        keypoints_3d = person["keypoints_3d"].clone()
        keypoints_3d[:, :3] = keypoints_3d[:, :3] @ camera.T

        # The model turns about its rest root J0, which lands at J0 + transl: transl' = G (transl + J0) - J0.
        # J0 (shape-dependent, about 0.2 m below the origin for SMPL) is the 3D root keypoint minus transl
        # when the root is labelled, else taken as the origin (true of our generated models).
        transl = person["transl"]
        if has["transl"]:
            root_offset = torch.zeros(3, dtype=torch.float64)
            if self.root is not None and has["keypoints_3d"] and person["keypoints_3d"][self.root, 3] > 0:
                root_offset = person["keypoints_3d"][self.root, :3] - transl
            transl = camera @ (transl + root_offset) - root_offset

        global_orient, pose, vertices = person["global_orient"], person["pose"], person["vertices"] @ camera.T
        if flip:
            global_orient = mirror_axis_angle(global_orient)
            pose = (mirror_pose(pose, self.spec.pose_joints) if self.spec.pose_joints is not None
                    else mirror_axis_angle(pose.reshape(-1, 3)).reshape(-1))
            if self.vertex_map is not None:
                vertices = vertices[self.vertex_map]
            else:  # no vertex correspondence: the mesh module recomputes vertices from the parameters
                has, vertices = has | {"vertices": False}, torch.zeros_like(vertices)
        global_orient = rotate_axis_angle_about_z(global_orient, augmentation.rotation_rad)

        return out | {
            "image": to_tensor(pixels),
            "K": (to_input @ K).float(),
            "keypoints_2d": keypoints_2d[order].float(),
            "keypoints_3d": keypoints_3d[order].float(),
            "global_orient": global_orient.float(),
            self.spec.pose_key: pose.float(),
            "betas": person["betas"].float(),
            "transl": transl.float(),
            "vertices": vertices.float(),
            "has": {name: torch.tensor(flag) for name, flag in has.items()},
        }


class MeshDataModule(LabelledDataModule):
    """Person crops with mesh labels, for body (SMPL, SMPL-X) or hand (MANO) mesh recovery.

    Batches are ``datamodules.format.MeshBatch``: every label of the body model at its shape in every sample
    (missing labels are zeros with their ``has`` flag False), in the camera frame of the augmented input.

    Args beyond ``LabelledDataModule``'s:
        body_model: ``smpl``, ``smplx`` or ``mano``; default: the manifest's ``body_model``.
            Labels of another model (per sample) keep only their keypoints.
        keypoint_names: keypoint order (drives flip swaps and extreme crops); default: the manifest's
            ``keypoints``, else SMPL's 24 joints, or the 4D-Humans/HaMeR order for their tars.
        source_format: ``crocoman`` (our shards) or ``hmr_tars`` (4D-Humans/HaMeR); default: detected
            from the first train shard's members. One format per DataModule.
        trust_pickle: allow reading the pickled labels of 4D-Humans/HaMeR tars.
        hmr_focal_length_px: their fixed focal length for a 256 px crop.
        scale_factor, translation_factor: box side x (1 +- scale_factor), centre shifted by up to
            translation_factor x side (clipped normals).
        rotation_deg, rotation_rate: in-plane rotation (normal, clipped at 2 x rotation_deg) on this
            share of samples.
        flip_rate: share of flipped samples; default 0.5, 0 for MANO, which cannot flip (right hands
            only: a flipped right hand is a left hand).
        extreme_crop_rate: share of samples cropped to a body part (upper body, shoulders up, head,
            torso) from their visible keypoints.
        mirror_vertices_from: a body-model folder (``smplx.create`` layout); its template gives the
            vertex mirror map, so flipped samples keep their vertices. Unset: flipped samples have
            ``has.vertices`` False (the module recomputes vertices from the parameters).
        vertex_mirror_tolerance_m: the template must be this symmetric.
        augment_on: where the colour jitter runs, ``worker`` or ``device`` (see ``PairDataModule``);
            the geometry is always done in the workers, where the labels move with it.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        train_weights: list[float] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        body_model: str | None = None,
        keypoint_names: list[str] | None = None,
        source_format: str | None = None,
        trust_pickle: bool = False,
        hmr_focal_length_px: float = 5000.0,
        batch_size: int = 64,
        num_workers: int = 4,
        image_size: int = 256,
        epoch_samples: int = 100_000,
        shuffle_buffer: int = 1000,
        augment: bool = True,
        color_jitter: float = 0.2,
        scale_factor: float = 0.3,
        translation_factor: float = 0.02,
        rotation_deg: float = 30.0,
        rotation_rate: float = 0.6,
        flip_rate: float | None = None,
        extreme_crop_rate: float = 0.1,
        mirror_vertices_from: str | None = None,
        vertex_mirror_tolerance_m: float = 0.002,
        augment_on: str = "worker",
    ) -> None:
        super().__init__(train_shards, train_weights, val_shards, test_shards, label_keys=(META_KEY, ARRAYS_KEY),
                         batch_size=batch_size, num_workers=num_workers, image_size=image_size,
                         epoch_samples=epoch_samples, shuffle_buffer=shuffle_buffer, augment=augment,
                         color_jitter=color_jitter, augment_on=augment_on)
        if body_model is not None and body_model not in BODY_MODELS:
            raise ValueError(f"body_model={body_model!r}: expected one of {list(BODY_MODELS)}")
        if source_format is not None and source_format not in SOURCE_FORMATS:
            raise ValueError(f"source_format={source_format!r}: expected one of {SOURCE_FORMATS} (or unset to detect)")
        if source_format == "hmr_tars":
            refuse_untrusted(trust_pickle, f"train_shards {train_shards!r}")
        self.save_hyperparameters()

    @cached_property
    def source_format(self) -> str:
        return self.hparams.source_format or detect_source_format(self.hparams.train_shards)

    @cached_property
    def body_model(self) -> str:
        body_model = self.hparams.body_model or find_manifest(self.hparams.train_shards).get("body_model")
        if body_model not in BODY_MODELS:
            raise ValueError(f"no usable body model for {self.hparams.train_shards!r} (manifest.json says "
                             f"{body_model!r}): set `body_model` to one of {list(BODY_MODELS)}")
        return body_model

    @cached_property
    def keypoint_names(self) -> tuple[str, ...]:
        if self.hparams.keypoint_names is not None:
            return tuple(self.hparams.keypoint_names)
        hand = self.body_model == "mano"
        if self.source_format == "hmr_tars":
            return HAMER_HAND_KEYPOINTS if hand else HMR_BODY_KEYPOINTS
        names = find_manifest(self.hparams.train_shards).get("keypoints")
        if names:
            return tuple(names)
        if hand:
            raise ValueError(f"no keypoint names for the hand shards {self.hparams.train_shards!r} (no manifest.json "
                             f"with `keypoints`): set `keypoint_names`")
        return SMPL_JOINT_NAMES

    @cached_property
    def flip_rate(self) -> float:
        if self.hparams.flip_rate is None:
            return 0.0 if self.body_model == "mano" else 0.5
        if self.hparams.flip_rate > 0 and self.body_model == "mano":
            raise ValueError(f"flip_rate={self.hparams.flip_rate} with MANO: the model is a right hand, and a flipped "
                             f"right hand is a left hand it cannot fit; set flip_rate to 0 (left hands in HaMeR "
                             f"tars are mirrored to right hands regardless)")
        return self.hparams.flip_rate

    @cached_property
    def vertex_map(self) -> Tensor | None:
        root = self.hparams.mirror_vertices_from
        if root is None:
            return None
        if self.body_model == "mano":
            raise ValueError("mirror_vertices_from with MANO: a right hand has no mirror vertices; unset it")
        template = smplx.create(root, model_type=self.body_model).v_template.double()
        return vertex_mirror_map(template, self.hparams.vertex_mirror_tolerance_m)

    def _sampler(self, train: bool) -> MeshSample:
        hp = self.hparams
        if self.source_format == "hmr_tars":
            refuse_untrusted(hp.trust_pickle, f"train_shards {hp.train_shards!r}")
        return MeshSample(
            self.body_model, self.keypoint_names, self.source_format, hp.image_size, augment=train and hp.augment,
            color_jitter=hp.color_jitter, scale_factor=hp.scale_factor, translation_factor=hp.translation_factor,
            rotation_deg=hp.rotation_deg, rotation_rate=hp.rotation_rate, flip_rate=self.flip_rate,
            extreme_crop_rate=hp.extreme_crop_rate, trust_pickle=hp.trust_pickle,
            hmr_focal_length_px=hp.hmr_focal_length_px, vertex_map=self.vertex_map,
            jitter_on_device=self.augment_on == "device",
        )
