"""Body-model files in the formats smplx 0.1.28 loads, built from the primitives the renderer draws.

`write_body_models(root)` writes `root/smpl/SMPL_NEUTRAL.pkl`, `root/smplx/SMPLX_NEUTRAL.npz` and
`root/mano/MANO_RIGHT.npz`, so tests and demos run the real `smplx.create(root, model_type)` path
without the licensed files, and a frame's `BodyModelParameters` posed through them give a mesh
lying on the rendered person:

- vertices sit on the primitives' surfaces (`surface.MeshTemplate`), each skinned with weight 1 to
  the joint its primitive rides, which is exactly how the renderer moves it; posedirs are zero;
- the rest pose is the synthetic skeleton's (arms hanging, flat hand), not SMPL's T-pose, with
  the root at the origin; pose parameters are the skeleton's parent-relative axis-angles;
- shapedirs: the rest body is exactly linear in the skeleton's betas (`BodyShape.betas`), so the
  blend shapes are recovered by least squares over sampled shapes, and checked to be exact;
- J_regressor: each joint is a locality-weighted minimum-norm combination of nearby vertices
  that reproduces the joint for the mean shape and along every shape direction, hence for every
  shape.

Real vertex and joint counts are kept (smplx hard-codes vertex ids of extra joints); those extra
joints (nose, toes, fingertips after the first 24 SMPL joints) are arbitrary surface points here.
SMPL-X and MANO are written as npz; SMPL's loader only reads pickle, so SMPL_NEUTRAL.pkl is the
one pickle we write: our own file, a plain dict of numpy arrays.
"""

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from body.layouts import HAND_KEYPOINT_PARENTS, NUM_BETAS, SMPL_PARENTS, SMPLX_PARENTS
from crocoman.synth.hand import (
    GESTURES,
    HAND_PRIMITIVE_JOINTS,
    NUM_HAND_JOINTS,
    HandShape,
    gesture_pose,
    hand_primitives,
    hand_rest_offsets,
)
from crocoman.synth.render import Capsules, Ellipsoids
from crocoman.synth.skeleton import JOINT_INDEX, BodyShape, forward_kinematics, rest_offsets
from crocoman.synth.surface import MeshTemplate, build_template, surface_vertices
from crocoman.synth.world import PRIMITIVE_JOINTS, body_primitives

_ROOT_PARENT = 4294967295  # how SMPL files mark the root in kintree_table (uint32 -1)
_SHAPE_SAMPLES = 12  # random shapes the linear shape space is fitted (and verified) on
_EXACT_M = 1e-5  # fitted shapes and regressed joints must reproduce the skeleton this closely
_REGRESSOR_VERTICES = 96  # nearest vertices a joint is first regressed from (more if needed)
_RCOND = 1e-6  # near-degenerate vertex sets would need huge cancelling weights: widen them instead
_SMPLX_EXPRESSIONS = 10  # smplx takes expression blend shapes from shapedirs[..., 10:20]
_SMPLX_LANDMARKS, _SMPLX_CONTOUR_LANDMARKS, _SMPLX_CONTOUR_ANGLES = 51, 17, 79


@dataclass(frozen=True)
class Layout:
    """What a model file is built from: a skeleton, the primitives on it and their counts."""

    num_vertices: int
    parents: tuple[int, ...]
    primitive_joints: tuple[int, ...]  # the joint each primitive (capsules first) rides
    rest: Callable  # shape -> (joints (J, 3), Capsules, Ellipsoids) in the rest pose
    reference_shape: BodyShape | HandShape  # betas zero
    sample_shape: Callable[[np.random.Generator], BodyShape | HandShape]


def _body_rest(shape: BodyShape) -> tuple[torch.Tensor, Capsules, Ellipsoids]:
    joints, rotations = forward_kinematics(torch.zeros(len(SMPL_PARENTS), 3), rest_offsets(shape))
    return (joints, *body_primitives(shape, joints, rotations))


# SMPL-X's joints beyond the body's first 22: jaw and eyes in the head, then 15 finger joints per
# hand (index, middle, pinky, ring, thumb; 3 each). The body renderer draws mittens, so finger
# joints are laid inside the hand capsule: a fraction of the way from wrist to knuckles, plus a
# sideways offset towards the thumb (forward, +z, with the palm facing the thigh).
_SMPLX_FACE = ((0.0, 0.02, 0.03), (0.032, 0.085, 0.085), (-0.032, 0.085, 0.085))  # jaw, eyes: from head x height
_FINGER_FORWARD_M = (0.015, 0.004, -0.017, -0.007, 0.026)  # index, middle, pinky, ring, thumb
_FINGER_FRACTIONS = ((1.0, 1.2, 1.35),) * 4 + ((0.3, 0.6, 0.9),)  # of wrist -> knuckles, per joint




def _smplx_rest(shape: BodyShape) -> tuple[torch.Tensor, Capsules, Ellipsoids]:
    joints, capsules, ellipsoids = _body_rest(shape)
    face = joints[JOINT_INDEX["head"]] + torch.tensor(_SMPLX_FACE) * shape.height_scale
    fingers = []
    for side in ("left", "right"):
        wrist, knuckles = joints[JOINT_INDEX[f"{side}_wrist"]], joints[JOINT_INDEX[f"{side}_hand"]]
        for forward_m, fractions in zip(_FINGER_FORWARD_M, _FINGER_FRACTIONS):
            sideways = torch.tensor([0.0, 0.0, forward_m]) * shape.height_scale
            fingers.extend(wrist + fraction * (knuckles - wrist) + sideways for fraction in fractions)
    return torch.cat([joints[:22], face, torch.stack(fingers)]), capsules, ellipsoids


def _hand_rest(shape: HandShape) -> tuple[torch.Tensor, Capsules, Ellipsoids]:
    zero_pose = torch.zeros(len(HAND_KEYPOINT_PARENTS), 3)
    keypoints, rotations = forward_kinematics(zero_pose, hand_rest_offsets(shape), HAND_KEYPOINT_PARENTS)
    return (keypoints[:NUM_HAND_JOINTS], *hand_primitives(shape, keypoints, rotations))


_BODY = dict(primitive_joints=PRIMITIVE_JOINTS, reference_shape=BodyShape(1, 1, 1, 1), sample_shape=BodyShape.sample)
LAYOUTS = {  # keyed by smplx model_type
    "smpl": Layout(num_vertices=6890, parents=SMPL_PARENTS, rest=_body_rest, **_BODY),
    "smplx": Layout(num_vertices=10475, parents=SMPLX_PARENTS, rest=_smplx_rest, **_BODY),
    "mano": Layout(
        num_vertices=778,
        parents=HAND_KEYPOINT_PARENTS[:NUM_HAND_JOINTS],
        primitive_joints=HAND_PRIMITIVE_JOINTS,
        rest=_hand_rest,
        reference_shape=HandShape(1, 1, 1),
        sample_shape=HandShape.sample,
    ),
}


@cache
def mesh_template(layout_name: str) -> MeshTemplate:
    """The vertex layout of a model, fixed on its reference shape (cached: labelled shards pose
    it once per sample)."""
    layout = LAYOUTS[layout_name]
    _, capsules, ellipsoids = layout.rest(layout.reference_shape)
    return build_template(capsules, ellipsoids, layout.num_vertices)


@dataclass(frozen=True)
class ModelArrays:
    """A model file's contents in float64, before each format's dtypes and extra keys."""

    v_template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    shapedirs: np.ndarray  # (V, 3, NUM_BETAS)
    J_regressor: np.ndarray  # (J, V)
    weights: np.ndarray  # (V, J)
    kintree_table: np.ndarray  # (2, J)


def _fit_linear(betas: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """Directions D with values[s] = values[0] + sum_k betas[s, k] D[k] (betas[0] = 0), checked
    to be exact: the geometry must be linear in the betas for smplx's blend shapes to hold."""
    active = np.flatnonzero(np.abs(betas).max(0) > 0)
    flat = (values - values[:1]).reshape(len(values), -1)
    solution = np.linalg.lstsq(betas[:, active], flat, rcond=None)[0]
    error_m = np.abs(betas[:, active] @ solution - flat).max()
    if error_m > _EXACT_M:
        raise ValueError(f"{what} is not linear in the betas (fit error {error_m:.2e} m): fix the shape's betas()")
    directions = np.zeros((betas.shape[1], *values.shape[1:]))
    directions[active] = solution.reshape(len(active), *values.shape[1:])
    return directions


def _regress_joint(joint: int, vertices: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Row j of J_regressor: weights w (V,) minimising sum w_v^2 / locality_v subject to
    w @ vertices[s] = joints[s, j] for the mean and every shape direction s, and sum w = 1.

    `vertices` (S, V, 3) and `joints` (S, J, 3) hold the mean shape then the shape directions.
    Nearby vertices are tried first, widening the neighbourhood until the constraints can be met.
    """
    distance_m = np.linalg.norm(vertices[0] - joints[0, joint], axis=-1)
    order = np.argsort(distance_m, kind="stable")
    count = _REGRESSOR_VERTICES
    while True:
        near = order[:count]
        locality = np.exp(-((distance_m[near] / np.median(distance_m[near])) ** 2))
        # (S * 3 + 1, n): coordinates of each candidate vertex in every shape, then ones.
        coordinates = vertices[:, near].transpose(0, 2, 1).reshape(-1, len(near))
        constraints = np.concatenate([coordinates, np.ones((1, len(near)))])
        targets = np.concatenate([joints[:, joint].reshape(-1), [1.0]])
        # Minimum-norm solution in w / sqrt(locality): far vertices get small weights.
        scale = np.sqrt(locality)
        weights = scale * np.linalg.lstsq(constraints * scale, targets, rcond=_RCOND)[0]
        if np.abs(constraints @ weights - targets).max() < _EXACT_M / 10 or count >= len(order):
            break
        count *= 2
    row = np.zeros(len(order))
    row[near] = weights
    return row


def build_model(layout_name: str) -> ModelArrays:
    """All arrays of a model file (float64), verified to reproduce the skeleton's rest joints
    for sampled shapes."""
    layout = LAYOUTS[layout_name]
    template = mesh_template(layout_name)
    rng = np.random.default_rng(0)
    shapes = [layout.reference_shape] + [layout.sample_shape(rng) for _ in range(_SHAPE_SAMPLES)]
    betas, vertices, joints = [], [], []
    for shape in shapes:
        rest_joints, capsules, ellipsoids = layout.rest(shape)
        betas.append(shape.betas().double().numpy())
        vertices.append(surface_vertices(template, capsules, ellipsoids).double().numpy())
        joints.append(rest_joints.double().numpy())
    betas, vertices, joints = np.stack(betas), np.stack(vertices), np.stack(joints)
    vertex_directions = _fit_linear(betas, vertices, f"{layout_name} surface")
    joint_directions = _fit_linear(betas, joints, f"{layout_name} joints")
    vertex_basis = np.concatenate([vertices[:1], vertex_directions])
    joint_basis = np.concatenate([joints[:1], joint_directions])
    num_joints = len(layout.parents)
    regressor = np.stack([_regress_joint(joint, vertex_basis, joint_basis) for joint in range(num_joints)])
    shaped = vertices[0] + np.einsum("sk,kvi->svi", betas, vertex_directions)
    error_m = np.abs(np.einsum("jv,svi->sji", regressor, shaped) - joints).max()
    if error_m > _EXACT_M:
        raise ValueError(f"{layout_name}: regressed joints miss the skeleton by {error_m:.2e} m")
    joint_of_vertex = np.asarray(layout.primitive_joints)[template.primitive.numpy()]
    return ModelArrays(
        v_template=vertices[0],
        faces=template.faces,
        shapedirs=vertex_directions.transpose(1, 2, 0),
        J_regressor=regressor,
        weights=np.eye(num_joints)[joint_of_vertex],
        kintree_table=np.stack([(_ROOT_PARENT, *layout.parents[1:]), range(num_joints)]),
    )


def _common_arrays(model: ModelArrays, shape_dims: int) -> dict[str, np.ndarray]:
    num_vertices, num_joints = model.weights.shape
    shapedirs = np.zeros((num_vertices, 3, shape_dims), np.float32)
    shapedirs[..., :NUM_BETAS] = model.shapedirs
    return {
        "v_template": model.v_template.astype(np.float32),
        "f": model.faces.astype(np.uint32),
        "shapedirs": shapedirs,
        "posedirs": np.zeros((num_vertices, 3, 9 * (num_joints - 1)), np.float32),  # no pose blend shapes
        "J_regressor": model.J_regressor.astype(np.float32),
        "weights": model.weights.astype(np.float32),
        "kintree_table": model.kintree_table.astype(np.int64),
    }


def _hand_pose_space() -> dict[str, np.ndarray]:
    """MANO's pose PCA, from our gesture library: the mean gesture, principal directions (45, 45)
    and each gesture's coefficients. Poses written to shards are relative to the flat hand, so
    load with `flat_hand_mean=True` (and `use_pca=False` to pass 45 axis-angle values)."""
    poses = torch.stack([gesture_pose(gesture)[1:].reshape(-1) for gesture in GESTURES]).double().numpy()
    mean = poses.mean(0)
    components = np.linalg.svd(poses - mean, full_matrices=True)[2]
    return {
        "hands_components": components.astype(np.float32),
        "hands_mean": mean.astype(np.float32),
        "hands_coeffs": ((poses - mean) @ components.T).astype(np.float32),
    }


def _smplx_extras(model: ModelArrays, template: MeshTemplate) -> dict[str, np.ndarray]:
    """Face landmarks on the head (faces of the head ellipsoid, barycentre) and a hand PCA that
    is the identity: SMPL-X's fingers move no vertex, as the body renderer draws mittens."""
    head = PRIMITIVE_JOINTS.index(JOINT_INDEX["head"])
    head_faces = np.flatnonzero((template.primitive.numpy()[model.faces] == head).all(1))
    landmarks = head_faces[np.linspace(0, len(head_faces) - 1, _SMPLX_LANDMARKS).astype(int)]
    contour = head_faces[np.linspace(0, len(head_faces) - 1, _SMPLX_CONTOUR_LANDMARKS).astype(int)]
    thirds = np.full(3, 1 / 3, np.float32)
    return {
        "lmk_faces_idx": landmarks.astype(np.int64),
        "lmk_bary_coords": np.tile(thirds, (_SMPLX_LANDMARKS, 1)),
        "dynamic_lmk_faces_idx": np.tile(contour, (_SMPLX_CONTOUR_ANGLES, 1)).astype(np.int64),
        "dynamic_lmk_bary_coords": np.tile(thirds, (_SMPLX_CONTOUR_ANGLES, _SMPLX_CONTOUR_LANDMARKS, 1)),
        **{f"hands_components{side}": np.eye(45, dtype=np.float32) for side in "lr"},
        **{f"hands_mean{side}": np.zeros(45, np.float32) for side in "lr"},
    }


MODEL_FILES = {"smpl": "smpl/SMPL_NEUTRAL.pkl", "smplx": "smplx/SMPLX_NEUTRAL.npz", "mano": "mano/MANO_RIGHT.npz"}


def write_body_models(root: str | Path, model_types: tuple[str, ...] = ("smpl", "smplx", "mano")) -> dict[str, Path]:
    """Write the model files smplx.create(root, model_type) reads (MANO with ext="npz") and
    return their paths. Load MANO with use_pca=False, flat_hand_mean=True to pass our labels."""
    root = Path(root)
    started = time.perf_counter()
    paths = {}
    for name in tqdm(model_types, desc="body models", unit="model"):
        model = build_model(name)
        path = root / MODEL_FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "smpl":
            with path.open("wb") as file:
                pickle.dump(_common_arrays(model, NUM_BETAS), file)
        elif name == "smplx":
            extras = _smplx_extras(model, mesh_template(name))
            np.savez_compressed(path, **_common_arrays(model, NUM_BETAS + _SMPLX_EXPRESSIONS), **extras)
        else:
            np.savez_compressed(path, **_common_arrays(model, NUM_BETAS), **_hand_pose_space())
        paths[name] = path
    sizes = ", ".join(f"{MODEL_FILES[name]} {path.stat().st_size / 1e6:.1f} MB" for name, path in paths.items())
    print(f"body-models: {sizes} in {time.perf_counter() - started:.1f} s -> {root}")
    return paths
