"""The joint-map head and what turns its joints into a mesh: inverse kinematics and a fitted camera."""

import contextlib
import io

import pytest
import torch

from backbone import CroCoNet
from body import BodyModel
from body.camera import fit_weak_perspective, project, weak_perspective_to_translation
from body.rotations import axis_angle_to_matrix, rotation_between
from heads import JointMapHead
from crocoman.synth.bodymodel import write_body_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_TYPES = ("smpl", "smplx", "mano")


@pytest.fixture(scope="module")
def body_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BodyModel]:
    root = tmp_path_factory.mktemp("body_models")
    with contextlib.redirect_stdout(io.StringIO()):
        write_body_models(root)
    return {model_type: BodyModel(model_type, str(root)) for model_type in MODEL_TYPES}


@pytest.fixture(scope="module")
def backbone() -> CroCoNet:
    torch.manual_seed(0)
    return CroCoNet(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                    decoder_num_heads=2)


def posed(model: BodyModel, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    global_orient = axis_angle_to_matrix(torch.randn(batch, 1, 3, generator=generator))
    pose = axis_angle_to_matrix(0.5 * torch.randn(batch, model.num_pose_joints, 3, generator=generator))
    return global_orient, pose, model(global_orient, pose, torch.zeros(batch, model.num_betas))[1]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_inverse_kinematics_reposes_the_skeleton_and_its_orientation(body_models: dict[str, BodyModel],
                                                                     model_type: str) -> None:
    """Joints of a posed rest-shape body, moved and scaled, give back rotations that pose the same
    skeleton and the same global orientation (twists differ: joints do not show them)."""
    model = body_models[model_type]
    skeleton = model.num_pose_joints + 1
    global_orient, _, joints = posed(model, 6, seed=1)
    found_orient, found_pose = model.inverse_kinematics(1.7 * joints[:, :skeleton] + torch.tensor([0.3, -1.0, 4.0]))
    assert found_orient.shape == (6, 1, 3, 3) and found_pose.shape == (6, model.num_pose_joints, 3, 3)
    torch.testing.assert_close(found_pose.mT @ found_pose, torch.eye(3).expand_as(found_pose), atol=1e-5, rtol=0)
    reposed = model(found_orient, found_pose, torch.zeros(6, model.num_betas))[1]
    torch.testing.assert_close(reposed[:, :skeleton], joints[:, :skeleton], atol=1e-5, rtol=0)
    torch.testing.assert_close(found_orient, global_orient, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=f"takes \\(B, {skeleton}, 3\\) joints"):
        model.inverse_kinematics(joints[:, :skeleton - 1])


def test_rotation_between_turns_one_direction_onto_another_including_the_opposite() -> None:
    source = torch.nn.functional.normalize(torch.tensor([[0.0, -1, 0], [0.3, 0.2, -0.9], [1.0, 0, 0]]), dim=-1)
    target = torch.nn.functional.normalize(torch.tensor([[0.0, 1, 0], [-0.5, 0.8, 0.1], [1.0, 0, 0]]), dim=-1)
    rotation = rotation_between(source, target)
    torch.testing.assert_close((rotation @ source[..., None])[..., 0], target, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(3))
    torch.testing.assert_close(rotation[2], torch.eye(3))


def test_fitted_weak_perspective_camera_projects_the_points_onto_their_keypoints() -> None:
    """Keypoints made by projecting points through a known camera give that camera back."""
    generator = torch.Generator().manual_seed(0)
    points = 0.5 * torch.randn(3, 24, 3, generator=generator)
    points[..., 2] *= 0.01  # weak perspective is exact for a flat body
    camera = torch.tensor([[0.9, 0.1, -0.2], [0.5, -0.3, 0.05], [1.2, 0.0, 0.3]])
    K = torch.tensor([[500.0, 0, 70], [0, 500, 60], [0, 0, 1]]).expand(3, 3, 3)
    keypoints = project(points + weak_perspective_to_translation(camera, K[:, 0, 0], 128)[:, None], K)
    torch.testing.assert_close(fit_weak_perspective(points, keypoints, K, 128), camera, atol=2e-3, rtol=0)


def test_joint_map_head_starts_at_the_crop_centre_and_reads_locations_under_its_heatmaps(backbone: CroCoNet) -> None:
    head = JointMapHead("mano", features=16, hidden=8)
    head.bind(backbone)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = head(backbone.features(images, head.layers), (4, 4))
    assert out["heatmaps"].shape == (2, 16, 16, 16) and out["locations"].shape == (2, 16, 6, 16, 16)
    torch.testing.assert_close(out["keypoints_px"], torch.full((2, 16, 2), 32.0))
    torch.testing.assert_close(out["joints_body"], torch.zeros(2, 16, 3))
    torch.testing.assert_close(out["joints_camera"], torch.zeros(2, 16, 3))
    # One hot cell per joint: the keypoint is that cell's centre, the joint that cell's location.
    heatmaps = torch.full_like(out["heatmaps"], -1e4)
    heatmaps[:, :, 5, 9] = 0
    weights = heatmaps.flatten(2).softmax(-1)
    centres = head.cell_centres((16, 16), weights)
    torch.testing.assert_close(weights @ centres, torch.tensor([38.0, 22.0]).expand(2, 16, 2))
    # Location maps holding each cell's own (x, y, 0) in both frames: read at the label, they give it back.
    own = torch.cat((centres.mT.unflatten(-1, (16, 16)), torch.zeros(1, 16, 16)))
    locations = torch.cat((own, own)).expand(2, 16, 6, 16, 16)
    labelled = torch.tensor([38.0, 22.0]).expand(2, 16, 2)
    cross_entropy, squared = head.losses({"heatmaps": heatmaps, "locations": locations}, labelled,
                                         torch.tensor([38.0, 22.0, 0.0, 38.0, 22.0, 1.0]).expand(2, 16, 6))
    torch.testing.assert_close(squared, torch.tensor([0.0, 1.0]).expand(2, 16, 2), atol=1e-6, rtol=0)
    # The cross-entropy is least (the target's entropy) for heatmaps that are the labelled Gaussians.
    gaussians = head.target_weights(labelled, (16, 16))
    assert torch.allclose(gaussians.argmax(-1), torch.tensor(5 * 16 + 9))
    fitted = head.losses({"heatmaps": gaussians.log().unflatten(-1, (16, 16)), "locations": locations}, labelled,
                         locations[..., 0, 0])[0]
    torch.testing.assert_close(fitted, -(gaussians * gaussians.log()).sum(-1))
    uniform = head.losses({"heatmaps": out["heatmaps"], "locations": locations}, labelled, locations[..., 0, 0])[0]
    torch.testing.assert_close(uniform, torch.full((2, 16), 256.0).log())
    assert fitted.max() < uniform.min()


def test_joint_map_head_rejects_an_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="model_type must be one of"):
        JointMapHead("smplh")
