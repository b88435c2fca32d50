"""Mesh-recovery heads and the body model, on model files written by our synthetic-world tool and
the real smplx code: BodyModel agrees with smplx itself, heads start at the mean body, train, and
the model-free head's fixed upsampling keeps the template."""

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch

from backbone import CroCoNet
from backbone.croco import sincos_pos_embed_2d
from body import BodyModel
from body.camera import weak_perspective_to_translation
from body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d
from heads import ParametricHead, VertexHead
from heads.parametric import UPRIGHT, sincos_position_embedding
from crocoman.synth.bodymodel import write_body_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_TYPES = ("smpl", "smplx", "mano")
SMPLX_CREATE_KWARGS = {"smpl": {}, "smplx": {"ext": "npz"}, "mano": {"ext": "npz", "is_rhand": True}}
HEAD_SIZE = {"dim": 32, "depth": 1, "num_heads": 2}
NEAR_MEAN = {"atol": 0.1, "rtol": 0}  # output layers start at 1% of the xavier scale


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("body_models")
    with contextlib.redirect_stdout(io.StringIO()):
        write_body_models(root)
    return root


@pytest.fixture(scope="module")
def body_models(model_root: Path) -> dict[str, BodyModel]:
    return {model_type: BodyModel(model_type, str(model_root)) for model_type in MODEL_TYPES}


@pytest.fixture(scope="module")
def backbone() -> CroCoNet:
    torch.manual_seed(0)
    return CroCoNet(img_size=64, embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                    decoder_num_heads=2).eval()


@pytest.fixture(scope="module")
def tokens(backbone: CroCoNet) -> torch.Tensor:
    with torch.no_grad():
        return backbone.encode(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))[0]


def random_labels(model: BodyModel, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(batch, 3, generator=generator),
            0.4 * torch.randn(batch, 3 * model.num_pose_joints, generator=generator),
            torch.randn(batch, model.num_betas, generator=generator))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_body_model_poses_like_smplx_with_axis_angle(model_root: Path, body_models: dict[str, BodyModel],
                                                      model_type: str) -> None:
    model = body_models[model_type]
    global_orient, pose, betas = random_labels(model, batch=3)
    vertices, joints = model.from_axis_angle(global_orient, pose, betas)
    reference = smplx.create(str(model_root), model_type=model_type, batch_size=3, use_pca=False,
                             flat_hand_mean=True, **SMPLX_CREATE_KWARGS[model_type])
    expected = reference(global_orient=global_orient, betas=betas, **{model.pose_name: pose})
    torch.testing.assert_close(vertices, expected.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(joints, expected.joints, atol=1e-5, rtol=0)
    assert vertices.shape == (3, model.num_vertices, 3) and joints.shape == (3, model.num_joints, 3)
    assert model.num_pose_joints == {"smpl": 23, "smplx": 21, "mano": 15}[model_type]
    assert model.faces.shape[1] == 3 and int(model.faces.max()) == model.num_vertices - 1


def test_body_model_is_frozen_kept_out_of_checkpoints_and_moves_with_the_module(model_root: Path) -> None:
    owner = torch.nn.Module()
    owner.body = BodyModel("mano", str(model_root))
    assert list(owner.parameters()) == [] and list(owner.state_dict()) == []
    assert all(not tensor.requires_grad for tensor in owner.body.layer.parameters())
    owner.to(torch.float64)
    assert owner.body.layer.v_template.dtype == torch.float64 and owner.body.faces.dtype == torch.long
    rotations = axis_angle_to_matrix(torch.randn(1, 16, 3, dtype=torch.float64)).requires_grad_()
    vertices, _ = owner.body(rotations[:, :1], rotations[:, 1:], torch.zeros(1, 10, dtype=torch.float64))
    vertices.sum().backward()  # heads train through it
    assert rotations.grad is not None and rotations.grad.abs().sum() > 0


def test_smpl_npz_loads_without_pickle(model_root: Path, body_models: dict[str, BodyModel], tmp_path: Path) -> None:
    """A converted (npz) SMPL file gives the same model as the pickle smplx itself reads."""
    with (model_root / "smpl" / "SMPL_NEUTRAL.pkl").open("rb") as file:
        arrays = pickle.load(file)
    (tmp_path / "smpl").mkdir()
    np.savez(tmp_path / "smpl" / "SMPL_NEUTRAL.npz", **arrays)
    from_npz, from_pkl = BodyModel("smpl", str(tmp_path)), body_models["smpl"]
    labels = random_labels(from_pkl, batch=2)
    torch.testing.assert_close(from_npz.from_axis_angle(*labels), from_pkl.from_axis_angle(*labels))


@pytest.mark.parametrize(("model_type", "file_name", "site"), [
    ("smpl", "SMPL_NEUTRAL.pkl", "smpl.is.tue.mpg.de"),
    ("smplx", "SMPLX_NEUTRAL.npz", "smpl-x.is.tue.mpg.de"),
    ("mano", "MANO_RIGHT.pkl", "mano.is.tue.mpg.de"),
])  # fmt: skip
def test_missing_model_file_names_the_path_and_where_to_get_it(tmp_path: Path, model_type: str, file_name: str,
                                                               site: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        BodyModel(model_type, str(tmp_path))
    message = str(error.value)
    for expected in (str(tmp_path / model_type), file_name, site, "crocoman-data body-models --out"):
        assert expected in message


def test_body_model_rejects_labels_of_the_wrong_size(body_models: dict[str, BodyModel]) -> None:
    model = body_models["smplx"]
    global_orient, _, betas = random_labels(model, batch=1)
    with pytest.raises(ValueError, match=r"pose\[:, :63\]"):
        model.from_axis_angle(global_orient, torch.zeros(1, 69), betas)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_joint_regressor_gives_the_models_joints_at_rest(body_models: dict[str, BodyModel], model_type: str) -> None:
    model = body_models[model_type]
    rest = torch.eye(3).expand(1, model.num_pose_joints + 1, 3, 3)
    vertices, joints = model(rest[:, :1], rest[:, 1:], torch.randn(1, 10, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(model.joint_regressor() @ vertices[0], joints[0], atol=1e-5, rtol=0)


def test_weak_perspective_camera_is_the_perspective_projection_at_the_persons_depth() -> None:
    """Points at the root's depth project through K and t to s * (X + t_xy) in [-1, 1] crop units."""
    camera = torch.tensor([[0.9, 0.1, -0.2], [0.5, -0.3, 0.05]])
    focal_px, size_px = torch.tensor([500.0, 300.0]), 128
    translation = weak_perspective_to_translation(camera, focal_px, size_px)
    points = torch.tensor([[0.3, -0.4, 0.0], [-0.2, 0.7, 0.0]])  # (sample, xyz), z = 0: the root's depth
    camera_points = points + translation
    pixels = focal_px[:, None] * camera_points[:, :2] / camera_points[:, 2:] + size_px / 2
    torch.testing.assert_close((pixels - size_px / 2) / (size_px / 2), camera[:, :1] * (points[:, :2] + camera[:, 1:]))
    torch.testing.assert_close(weak_perspective_to_translation(camera[:1], 500.0, 128), translation[:1])


@pytest.mark.parametrize(("model_type", "iterations"), [("smpl", 1), ("smplx", 2), ("mano", 1)])
def test_parametric_head_starts_at_the_upright_rest_body(backbone: CroCoNet, tokens: torch.Tensor, model_type: str,
                                                         iterations: int) -> None:
    head = ParametricHead(model_type, iterations=iterations, **HEAD_SIZE)
    head.bind(backbone)
    output = head(tokens)
    joints = {"smpl": 23, "smplx": 21, "mano": 15}[model_type]
    assert output["global_orient"].shape == (2, 1, 3, 3) and output["pose"].shape == (2, joints, 3, 3)
    assert output["betas"].shape == (2, 10) and output["camera"].shape == (2, 3)
    torch.testing.assert_close(output["global_orient"], UPRIGHT.expand(2, 1, 3, 3), **NEAR_MEAN)
    torch.testing.assert_close(output["pose"], torch.eye(3).expand(2, joints, 3, 3), **NEAR_MEAN)
    torch.testing.assert_close(output["betas"], torch.zeros(2, 10), **NEAR_MEAN)
    torch.testing.assert_close(output["camera"], torch.tensor([[0.9, 0.0, 0.0]] * 2), **NEAR_MEAN)


def test_parametric_head_starts_at_an_hmr_mean_parameter_file(backbone: CroCoNet, tokens: torch.Tensor,
                                                              tmp_path: Path) -> None:
    """SPIN / HMR 2.0 layout: per joint, the first two rotation-matrix columns stored row by row."""
    rotations = axis_angle_to_matrix(torch.randn(24, 3, generator=torch.Generator().manual_seed(2)))
    shape, cam = np.linspace(-1, 1, 10), np.array([0.8, 0.05, -0.1])
    np.savez(tmp_path / "smpl_mean_params.npz", pose=rotations[:, :, :2].reshape(-1).numpy(), shape=shape, cam=cam)
    head = ParametricHead("smplx", mean_params=str(tmp_path / "smpl_mean_params.npz"), **HEAD_SIZE)
    head.bind(backbone)
    output = head(tokens)
    torch.testing.assert_close(output["global_orient"][:, 0], rotations[:1].expand(2, 3, 3), **NEAR_MEAN)
    torch.testing.assert_close(output["pose"], rotations[1:22].expand(2, 21, 3, 3), **NEAR_MEAN)
    torch.testing.assert_close(output["betas"], torch.tensor(shape, dtype=torch.float32).expand(2, 10), **NEAR_MEAN)
    torch.testing.assert_close(output["camera"], torch.tensor(cam, dtype=torch.float32).expand(2, 3), **NEAR_MEAN)
    with pytest.raises(FileNotFoundError, match="smpl_mean_params.npz"):
        ParametricHead("smpl", mean_params=str(tmp_path / "missing.npz"))


def test_parametric_head_fits_a_fixed_batch(backbone: CroCoNet, tokens: torch.Tensor) -> None:
    torch.manual_seed(0)
    head = ParametricHead("mano", iterations=2, **HEAD_SIZE)
    head.bind(backbone)
    generator = torch.Generator().manual_seed(3)
    target_rotations = axis_angle_to_matrix(0.6 * torch.randn(2, 16, 3, generator=generator))
    target_betas, target_camera = torch.randn(2, 10, generator=generator), torch.rand(2, 3, generator=generator)

    def loss() -> torch.Tensor:
        output = head(tokens)
        rotations = torch.cat((output["global_orient"], output["pose"]), dim=1)
        return ((matrix_to_rotation_6d(rotations) - matrix_to_rotation_6d(target_rotations)).pow(2).mean()
                + (output["betas"] - target_betas).pow(2).mean() + (output["camera"] - target_camera).pow(2).mean())

    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    first = loss().item()
    for _ in range(50):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert value.item() < 0.1 * first


@pytest.fixture(scope="module")
def smpl_vertex_head(model_root: Path, backbone: CroCoNet) -> VertexHead:
    head = VertexHead("smpl", str(model_root), **HEAD_SIZE)
    head.bind(backbone)
    return head


def rest_template(model: BodyModel) -> torch.Tensor:
    """The template stood upright in the camera, root-relative: what an untrained VertexHead predicts."""
    template = model.layer.v_template
    return (template - model.joint_regressor()[0] @ template) @ UPRIGHT.T


@pytest.mark.parametrize(("model_type", "mean_error_mm"), [("smpl", 20.0), ("mano", 5.0)])
def test_upsampling_keeps_the_template(request: pytest.FixtureRequest, model_root: Path,
                                       body_models: dict[str, BodyModel], model_type: str,
                                       mean_error_mm: float) -> None:
    """Upsampling the template's own coarse vertices: exact at those vertices, close elsewhere
    (synthetic SMPL: about 13 mm mean over 431 coarse vertices, MANO about 3 mm over 195)."""
    if model_type == "smpl":
        head = request.getfixturevalue("smpl_vertex_head")
    else:
        head = VertexHead(model_type, str(model_root), **HEAD_SIZE)
        again = VertexHead(model_type, str(model_root), **HEAD_SIZE)
        assert torch.equal(again.coarse_index, head.coarse_index)  # deterministic: the same file, the same mesh
    template = rest_template(body_models[model_type])
    assert head.template_coarse.shape == (head.num_coarse, 3)
    torch.testing.assert_close(head.upsample_weight.sum(dim=1), torch.ones(len(template)))
    assert (head.upsample_weight >= 0).all()
    upsampled = head.upsample(head.template_coarse[None])[0]
    torch.testing.assert_close(upsampled[head.coarse_index], head.template_coarse, atol=1e-6, rtol=0)
    error_mm = 1000 * (upsampled - template).norm(dim=-1)
    print(f"{model_type}: template through {head.num_coarse} coarse vertices: "
          f"{error_mm.mean():.1f} mm mean, {error_mm.max():.1f} mm max")
    assert error_mm.mean() < mean_error_mm


def test_vertex_head_starts_at_the_upright_template(body_models: dict[str, BodyModel], smpl_vertex_head: VertexHead,
                                                    tokens: torch.Tensor) -> None:
    model = body_models["smpl"]
    output = smpl_vertex_head(tokens)
    assert output["vertices"].shape == (2, 6890, 3) and output["coarse_vertices"].shape == (2, 431, 3)
    assert output["joints"].shape == (2, model.num_joints, 3) and output["camera"].shape == (2, 3)
    torch.testing.assert_close(output["joints"][:, 0], torch.zeros(2, 3))  # root-relative
    torch.testing.assert_close(output["joints"], torch.einsum("jv,bvi->bji", model.joint_regressor(),
                                                              output["vertices"]), atol=1e-5, rtol=0)
    coarse_template = rest_template(model)[smpl_vertex_head.coarse_index]
    offset_m = (output["coarse_vertices"] - coarse_template).norm(dim=-1)
    assert offset_m.mean() < 0.03 and offset_m.max() < 0.08
    torch.testing.assert_close(output["camera"], torch.tensor([[0.9, 0.0, 0.0]] * 2), **NEAR_MEAN)


def test_vertex_head_trains_end_to_end_and_its_checkpoint_carries_the_topology(
        model_root: Path, backbone: CroCoNet, smpl_vertex_head: VertexHead) -> None:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    tokens, positions = backbone.encode(images)
    output = smpl_vertex_head(tokens, positions)
    target = smpl_vertex_head.template_coarse.flip(-1)
    ((output["coarse_vertices"] - target).abs().mean() + output["vertices"].abs().mean()).backward()
    assert smpl_vertex_head.vertex_query.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in smpl_vertex_head.decoder.parameters())
    assert backbone.enc_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    backbone.zero_grad()

    state = smpl_vertex_head.state_dict()
    for name in ("coarse_index", "template_coarse", "upsample_index", "upsample_weight", "joint_regressor", "faces"):
        assert name in state
    restored = VertexHead("smpl", str(model_root), **HEAD_SIZE)
    restored.bind(backbone)
    restored.upsample_weight.zero_()
    restored.template_coarse.zero_()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(tokens.detach()), smpl_vertex_head(tokens.detach()))


def test_heads_take_masked_tokens_and_other_image_sizes_with_their_positions(backbone: CroCoNet) -> None:
    head = ParametricHead("smpl", **HEAD_SIZE)
    head.bind(backbone)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True  # the top half hidden
    tokens, positions = backbone.encode(torch.rand(2, 3, 64, 64), mask)
    assert head(tokens, positions)["camera"].shape == (2, 3)
    with pytest.raises(ValueError, match="patch grid"):
        head(tokens)
    assert head(*backbone.encode(torch.rand(1, 3, 96, 96)))["camera"].shape == (1, 3)


def test_token_positions_get_the_backbones_sine_cosine_embedding() -> None:
    grid = (3, 5)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    positions = torch.stack((rows, cols), dim=-1).flatten(0, 1)
    torch.testing.assert_close(sincos_position_embedding(positions, 32), sincos_pos_embed_2d(32, grid)[0])


def test_meshes_stay_float32_under_bf16_autocast(body_models: dict[str, BodyModel], smpl_vertex_head: VertexHead,
                                                 tokens: torch.Tensor) -> None:
    """Mixed precision speeds up the transformer, but mm-level vertices and joints keep float32."""
    model = body_models["smpl"]
    labels = random_labels(model, batch=2)
    expected = model.from_axis_angle(*labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posed = model.from_axis_angle(*labels)
        output = smpl_vertex_head(tokens)
    torch.testing.assert_close(posed, expected)
    assert output["vertices"].dtype == output["joints"].dtype == torch.float32
    torch.testing.assert_close(output["joints"], torch.einsum("jv,bvi->bji", smpl_vertex_head.joint_regressor,
                                                              output["vertices"]), atol=1e-5, rtol=0)
