"""Generated body-model files load through the real smplx code and, posed with a rendered frame's
parameters, coincide with what the renderer drew: same joints, vertices on the silhouette, same
depth. Helpers here are shared with test_synth_labelled."""

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch

from crocoman.synth import GESTURE_NAMES, render_group, render_hand
from crocoman.data import main
from crocoman.synth.hand import GESTURES, gesture_pose
from crocoman.synth.skeleton import axis_angle_to_matrix, matrix_to_axis_angle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 128
COUNTS = {"smpl": (6890, 24), "smplx": (10475, 55), "mano": (778, 16)}  # vertices, joints
# How the files are loaded: MANO is npz (no pickle) and our hand poses are 45 axis-angle values
# relative to the flat hand.
LOAD_KWARGS = {"smpl": {}, "smplx": {}, "mano": {"ext": "npz", "use_pca": False, "flat_hand_mean": True}}
POSE_ARGUMENT = {"smpl": "body_pose", "smplx": "body_pose", "mano": "hand_pose"}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Model files written through the CLI, and what it printed."""
    root = tmp_path_factory.mktemp("body_models")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["body-models", "--out", str(root)])
    return root, printed.getvalue()


def load_model(root: Path, model_type: str) -> torch.nn.Module:
    return smplx.create(str(root), model_type=model_type, **LOAD_KWARGS[model_type])


def posed(model: torch.nn.Module, model_type: str, body: dict[str, torch.Tensor]) -> smplx.utils.ModelOutput:
    """smplx output for labels `body` (global_orient, pose, betas, transl); SMPL-X takes the first
    21 of SMPL's 23 body joints (the last two are SMPL's hand joints)."""
    pose = body["pose"][:63] if model_type == "smplx" else body["pose"]
    with torch.no_grad():
        return model(
            betas=body["betas"][None], global_orient=body["global_orient"][None], transl=body["transl"][None],
            **{POSE_ARGUMENT[model_type]: pose[None]},
        )  # fmt: skip


def frame_body(frame) -> dict[str, torch.Tensor]:
    return {name: getattr(frame.body, name) for name in ("global_orient", "pose", "betas", "transl")}


def project(K: torch.Tensor, points_m: torch.Tensor) -> torch.Tensor:
    projected = points_m @ K.T
    return projected[:, :2] / projected[:, 2:]


def fraction_on_mask(K: torch.Tensor, points_m: torch.Tensor, mask: torch.Tensor, tolerance_px: int = 0) -> float:
    """Share of points whose pixel is on the mask, grown by `tolerance_px` (silhouette edges:
    a surface point can fall in a pixel whose centre ray just misses the body)."""
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * tolerance_px + 1, 1, tolerance_px)[0, 0]
    pixel = project(K, points_m).round().long().clamp(0, mask.shape[0] - 1)
    return float(grown[pixel[:, 1], pixel[:, 0]].mean())


def frames(count: int) -> list:
    """Body frames of different people, poses, cameras."""
    return [render_group(7, index, SIZE, cameras=1, times=1).frames[0] for index in range(count)]


def test_files_load_with_real_counts_and_a_closed_mesh(model_root: tuple[Path, str]) -> None:
    root, printed = model_root
    assert printed.startswith("body-models: smpl/SMPL_NEUTRAL.pkl")
    with (root / "smpl" / "SMPL_NEUTRAL.pkl").open("rb") as file:
        arrays = pickle.load(file)
    assert all(isinstance(value, np.ndarray) and value.dtype != object for value in arrays.values())
    assert arrays["kintree_table"][0, 0] == 4294967295
    for path in (root / "smplx" / "SMPLX_NEUTRAL.npz", root / "mano" / "MANO_RIGHT.npz"):
        assert all(value.dtype != object for value in np.load(path, allow_pickle=False).values())
    for model_type, (num_vertices, num_joints) in COUNTS.items():
        model = load_model(root, model_type)
        assert model.v_template.shape == (num_vertices, 3) and model.J_regressor.shape == (num_joints, num_vertices)
        faces = model.faces_tensor
        assert faces.min() == 0 and faces.max() == num_vertices - 1
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
        assert set(torch.unique(edges, dim=0, return_counts=True)[1].tolist()) == {2}  # closed, manifold


@pytest.mark.parametrize("model_type", ["smpl", "smplx"])
def test_posed_body_joints_are_the_skeletons(model_root: tuple[Path, str], model_type: str) -> None:
    model = load_model(model_root[0], model_type)
    joints = 24 if model_type == "smpl" else 22  # SMPL-X replaces SMPL's two hand joints by fingers
    for frame in frames(4):
        output = posed(model, model_type, frame_body(frame))
        error_m = (output.joints[0, :joints] - frame.joints_3d_m[:joints]).norm(dim=-1).max()
        assert error_m < 1e-4


@pytest.mark.parametrize("model_type", ["smpl", "smplx"])
def test_posed_body_vertices_land_on_the_rendered_person(model_root: tuple[Path, str], model_type: str) -> None:
    model = load_model(model_root[0], model_type)
    for frame in frames(4):
        vertices = posed(model, model_type, frame_body(frame)).vertices[0]
        assert fraction_on_mask(frame.K, vertices, frame.rendering.mask) > 0.9
        assert fraction_on_mask(frame.K, vertices, frame.rendering.mask, tolerance_px=1) > 0.995


def test_posed_mesh_depth_agrees_with_the_rendered_depth(model_root: tuple[Path, str]) -> None:
    """z-buffer the camera-facing vertices per pixel and compare with the rendered depth; misses
    are vertices buried in an overlapping primitive or rim vertices over another limb."""
    model = load_model(model_root[0], "smpl")
    faces = model.faces_tensor
    for frame in frames(4):
        vertices = posed(model, "smpl", frame_body(frame)).vertices[0]
        corners = vertices[faces]
        face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, 0))
        facing = (normals * vertices).sum(-1) < 0  # camera at the origin
        pixel = project(frame.K, vertices[facing]).round().long().clamp(0, SIZE - 1)
        nearest_m = torch.full((SIZE * SIZE,), torch.inf).scatter_reduce(
            0, pixel[:, 1] * SIZE + pixel[:, 0], vertices[facing, 2], "amin"
        )
        covered = torch.isfinite(nearest_m) & frame.rendering.mask.reshape(-1)
        difference_m = (nearest_m - frame.rendering.depth_m.reshape(-1))[covered].abs()
        assert covered.sum() > 300
        assert difference_m.median() < 0.005 and (difference_m < 0.02).float().mean() > 0.8


def test_posed_hand_matches_the_rendered_hand(model_root: tuple[Path, str]) -> None:
    model = load_model(model_root[0], "mano")
    for index in range(len(GESTURE_NAMES)):
        frame = render_hand(7, index, SIZE).frame
        output = posed(model, "mano", frame_body(frame))
        assert (output.joints[0] - frame.joints_3d_m[:16]).norm(dim=-1).max() < 1e-4
        assert fraction_on_mask(frame.K, output.vertices[0], frame.rendering.mask, tolerance_px=1) > 0.995


def test_mano_pose_space_spans_the_gestures(model_root: tuple[Path, str]) -> None:
    """With PCA on, the gesture library's coefficients reproduce each gesture."""
    arrays = np.load(model_root[0] / "mano" / "MANO_RIGHT.npz")
    components, mean, coeffs = arrays["hands_components"], arrays["hands_mean"], arrays["hands_coeffs"]
    np.testing.assert_allclose(components @ components.T, np.eye(45), atol=1e-5)
    poses = np.stack([gesture_pose(gesture)[1:].reshape(-1).numpy() for gesture in GESTURES])
    np.testing.assert_allclose(coeffs @ components + mean, poses, atol=1e-5)


def test_axis_angle_round_trips_through_matrices_up_to_pi() -> None:
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(500, 3, generator=generator), dim=-1)
    angles = torch.cat([torch.rand(490, generator=generator) * 3.1, torch.full((5,), 3.14159), torch.full((5,), 1e-9)])
    axis_angle = directions * angles[:, None]
    recovered = matrix_to_axis_angle(axis_angle_to_matrix(axis_angle))
    torch.testing.assert_close(axis_angle_to_matrix(recovered), axis_angle_to_matrix(axis_angle), atol=1e-5, rtol=0)
    torch.testing.assert_close(recovered[:495], axis_angle[:495], atol=1e-4, rtol=0)
