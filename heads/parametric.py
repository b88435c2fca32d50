"""Body-model parameter regression from encoder tokens, as HMR 2.0's SMPL head.

A few query tokens cross-attend to the patch tokens through a small transformer decoder
(``TokenDecoder``, shared with ``VertexHead``); the query of ``ParametricHead`` is the current
parameter estimate, so with ``iterations > 1`` the head refines its own output (HMR's iterative
error feedback). Predictions are residuals on mean parameters and the output layers start near
zero, so an untrained head outputs the mean body: training starts from a plausible person
instead of a random mesh.
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from backbone.blocks import DecoderBlock
from body.camera import MEAN_CAMERA
from body.layouts import POSE_JOINTS, POSE_NAME
from body.model import BodyModel, ModelType
from body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d, rotation_6d_to_matrix
from heads.mesh_head import PosedMeshHead, SkeletonLabeller, require_body_model
from heads.mesh_losses import masked_mean, pose_prior, rotation_loss

UPRIGHT = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180 deg about x: body y-up -> OpenCV camera y-down, facing it
_OUTPUT_GAIN = 0.01  # output layers start near zero: the first predictions are the mean


def init_linear_layers(module: nn.Module) -> None:
    """CroCo's init for the head's own layers (xavier, zero bias), so heads train like the backbone."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def init_output_layer(layer: nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight, gain=_OUTPUT_GAIN)
    nn.init.zeros_(layer.bias)


def sincos_position_embedding(positions: Tensor, dim: int) -> Tensor:
    """(..., 2) (row, column) -> (..., dim): the fixed 2D sine-cosine embedding of MAE / CroCo v1
    (first half the column, second half the row), computed at the given positions rather than for
    one grid, so a head works at any image size and with masked token sets."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter)
    angles = positions.flip(-1).float()[..., None] * omega  # (..., [column, row], quarter)
    return torch.cat((angles.sin(), angles.cos()), dim=-1).flatten(-2)


class TokenDecoder(nn.Module):
    """Query tokens attend to the encoder's patch tokens: self-attention, cross-attention, MLP.

    The encoder uses RoPE, whose tokens carry no absolute position, yet where the person is in the
    crop is what the camera (tx, ty) is regressed from: the projected patch tokens get a fixed 2D
    sine-cosine embedding of their grid position. Blocks are the CroCo decoder's, without RoPE.
    """

    def __init__(self, embed_dim: int, patch_grid: tuple[int, int], dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"head dim must be divisible by 4 (2D sine-cosine positions), got {dim}")
        self.patch_grid = tuple(patch_grid)
        self.dim = dim
        self.memory_proj = nn.Linear(embed_dim, dim)
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def memory(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """(B, N, embed_dim) encoder tokens -> (B, N, dim) keys/values with their positions.

        ``positions``: (B, N, 2) (row, column) as returned by ``encode``; None: the full patch grid
        of the bound backbone, row-major.
        """
        if positions is None:
            rows, cols = self.patch_grid
            if tokens.shape[1] != rows * cols:
                raise ValueError(f"{tokens.shape[1]} tokens, but the head was bound to a {rows}x{cols} patch grid: "
                                 f"pass the positions that encode() returns with them")
            grid = torch.meshgrid(torch.arange(rows, device=tokens.device), torch.arange(cols, device=tokens.device),
                                  indexing="ij")
            positions = torch.stack(grid, dim=-1).flatten(0, 1)
        return self.memory_proj(tokens) + sincos_position_embedding(positions, self.dim).to(tokens.dtype)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        """(B, Q, dim) queries, (B, N, dim) memory -> (B, Q, dim) normalised query tokens."""
        for block in self.blocks:
            queries = block(queries, memory, None, None)
        return self.norm(queries)


def mean_parameters(path: str | None, num_joints: int, num_betas: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean 6D rotations (num_joints * 6,), betas (num_betas,) and camera (3,) to regress residuals on.

    ``path``: an HMR-style ``*_mean_params.npz`` (SPIN / HMR 2.0's ``smpl_mean_params.npz``,
    HaMeR's ``mano_mean_params.npz``) with keys ``pose`` (joints x 6, each joint's 3x2 first two
    rotation-matrix columns row by row, SPIN's layout), ``shape`` and ``cam``. Only the first
    ``num_joints`` rotations are used (SMPL-X's 22 body joints are SMPL's first 22); betas beyond
    the file's are 0. None: the rest pose stood upright in the camera, mean shape, ``MEAN_CAMERA``.
    """
    if path is None:
        rotations = torch.eye(3).repeat(num_joints, 1, 1)
        rotations[0] = UPRIGHT
        return matrix_to_rotation_6d(rotations).flatten(), torch.zeros(num_betas), torch.tensor(MEAN_CAMERA)
    if not Path(path).is_file():
        raise FileNotFoundError(f"mean parameters not found: {path}. Give HMR 2.0's smpl_mean_params.npz (keys pose, "
                                f"shape, cam) or mean_params: null to start from the upright rest pose")
    arrays = np.load(path, allow_pickle=False)
    missing = {"pose", "shape", "cam"} - set(arrays.files)
    if missing:
        raise KeyError(f"{path} lacks {sorted(missing)}: an HMR-style mean-parameter file has pose, shape and cam")
    pose = torch.from_numpy(arrays["pose"].astype(np.float32)).reshape(-1, 3, 2)
    if len(pose) < num_joints:
        raise ValueError(f"{path} holds {len(pose)} mean rotations, the model needs {num_joints}: use the mean-"
                         f"parameter file of this body model")
    betas = torch.zeros(num_betas)
    shape = torch.from_numpy(arrays["shape"].astype(np.float32)).flatten()[:num_betas]
    betas[:len(shape)] = shape
    camera = torch.from_numpy(arrays["cam"].astype(np.float32)).flatten()
    return pose[:num_joints].transpose(1, 2).flatten(), betas, camera


class ParametricHead(PosedMeshHead):
    """Encoder tokens -> global orientation, pose, betas and a weak-perspective camera.

    One query token, embedded from the current estimate (6D rotations, betas, camera), attends
    to the patch tokens; linear layers read residuals off it; with ``iterations > 1`` the updated
    estimate becomes the next query. The camera ``(s, tx, ty)`` follows ``body.camera``: ``tx,
    ty`` and ``s`` act on the body model's output frame (``BodyModel``: no translation).

    Output (``forward``): ``global_orient`` (B, 1, 3, 3), ``pose`` (B, P, 3, 3) rotation matrices
    (P = 23 SMPL, 21 SMPL-X body, 15 MANO), ``betas`` (B, num_betas), ``camera`` (B, 3); ``mesh``
    poses the task's body model with them. Its own loss terms: ``params`` (rotations and betas
    towards labelled parameters) and ``prior`` (``pose_prior``).

    Args:
        model_type: ``smpl``, ``smplx`` or ``mano``: how many pose rotations to regress.
        num_betas: shape coefficients.
        dim, depth, num_heads, mlp_ratio: the transformer decoder (HMR 2.0: 1024, 6, 8, 4).
        iterations: refinement passes through the decoder (iterative error feedback).
        mean_params: an HMR-style ``*_mean_params.npz`` (see ``mean_parameters``); None: the
            upright rest pose, betas 0, camera s = 0.9.
    """

    def __init__(self, model_type: ModelType = "smpl", num_betas: int = 10, dim: int = 512, depth: int = 4,
                 num_heads: int = 8, iterations: int = 1, mean_params: str | None = None,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if model_type not in POSE_JOINTS:
            raise ValueError(f"model_type must be one of {sorted(POSE_JOINTS)}, got {model_type!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        self.model_type = model_type
        self.num_pose_joints = POSE_JOINTS[model_type]
        self.num_betas = num_betas
        self.dim, self.depth, self.num_heads, self.mlp_ratio = dim, depth, num_heads, mlp_ratio
        self.iterations = iterations
        pose, betas, camera = mean_parameters(mean_params, self.num_pose_joints + 1, num_betas)
        # Persistent: a checkpoint predicts the same bodies whatever mean file is installed later.
        self.register_buffer("mean_pose", pose)
        self.register_buffer("mean_betas", betas)
        self.register_buffer("mean_camera", camera)

    def bind(self, backbone: nn.Module) -> None:
        self.decoder = TokenDecoder(backbone.embed_dim, backbone.patch_grid, self.dim, self.depth, self.num_heads,
                                    self.mlp_ratio)
        self.query = nn.Linear(len(self.mean_pose) + self.num_betas + 3, self.dim)
        self.pose_out = nn.Linear(self.dim, len(self.mean_pose))
        self.betas_out = nn.Linear(self.dim, self.num_betas)
        self.camera_out = nn.Linear(self.dim, 3)
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_layers(self)
        for layer in (self.pose_out, self.betas_out, self.camera_out):
            init_output_layer(layer)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> dict[str, Tensor]:
        """(B, N, embed_dim) encoder tokens (and their positions, see ``TokenDecoder.memory``) -> parameters."""
        memory = self.decoder.memory(tokens, positions)
        batch = len(tokens)
        pose = self.mean_pose.expand(batch, -1)
        betas = self.mean_betas.expand(batch, -1)
        camera = self.mean_camera.expand(batch, -1)
        for _ in range(self.iterations):
            query = self.query(torch.cat((pose, betas, camera), dim=1))[:, None]
            token = self.decoder(query, memory)[:, 0]
            pose = pose + self.pose_out(token)
            betas = betas + self.betas_out(token)
            camera = camera + self.camera_out(token)
        rotations = rotation_6d_to_matrix(pose.reshape(batch, -1, 6))
        return {"global_orient": rotations[:, :1], "pose": rotations[:, 1:], "betas": betas, "camera": camera}

    def mesh(self, out: dict[str, Tensor], body_model: BodyModel | None, K: Tensor,
             image_size: int) -> dict[str, Tensor]:
        body_model = require_body_model(self, body_model, "body-model parameters")
        vertices, joints = body_model(out["global_orient"], out["pose"], out["betas"])
        return out | {"vertices": vertices, "joints": joints}

    def loss_terms(self, out: dict[str, Tensor], batch: dict, skeleton: SkeletonLabeller) -> dict[str, Tensor]:
        """``params``: squared distances of the rotations and betas to the labelled ones (samples with
        parameters); ``prior``: rotations near rest and shape near the mean, over every sample."""
        pose_joints = out["pose"].shape[1]
        pose = batch[POSE_NAME[self.model_type]][:, :3 * pose_joints].unflatten(1, (pose_joints, 3))
        params = (rotation_loss(out["global_orient"], axis_angle_to_matrix(batch["global_orient"])[:, None])
                  + rotation_loss(out["pose"], axis_angle_to_matrix(pose))
                  + (out["betas"] - batch["betas"]).pow(2).mean(-1))
        return {"params": masked_mean(params, batch["has"]["params"]),
                "prior": pose_prior(out["pose"], out["betas"]).mean()}
