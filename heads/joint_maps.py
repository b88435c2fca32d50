"""Per-joint heatmaps and 3D location maps on DPT features: where each joint is, and where in 3D.

Reading a pose off a handful of pooled or query tokens asks the head to learn where the limbs are
from a few thousand crops; a dense map learns that per pixel, as DensePose does. For every joint
the head predicts a heatmap (softmax over the map: the joint's 2D position as its expectation,
integral regression) and location maps holding the joint's root-relative 3D position at every
pixel (VNect): the joint's 3D position is the location maps read where its heatmap is. Training
reads them at the labelled 2D position instead, so the 3D terms teach the maps at the right
pixels from the first step, while the heatmaps learn to point there.

Locations come in two frames. In the body's own frame (the root joint's rotation undone) a pose
reads the same whichever way the person faces; in the camera frame the depth of every limb
depends on that heading, which the image shows poorly, and the averaged answer is a flattened
body (measured on the synthetic people: PA-MPJPE 188 mm after 500 steps against 132 mm in the
body's frame). So the pose comes from the body-frame maps and only the global orientation from
the camera-frame ones: the rotation that best lays one skeleton onto the other.

The head regresses joints, not body-model parameters: its ``mesh`` turns them into rotations with
the task's body model (``body.BodyModel.inverse_kinematics``) and poses a mesh with them.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from body.camera import fit_weak_perspective
from body.layouts import POSE_JOINTS
from body.model import BodyModel, ModelType
from body.rotations import axis_angle_to_matrix, rotation_fitting
from heads.dense import DenseHead
from heads.mesh_head import PosedMeshHead, SkeletonLabeller, require_body_model
from heads.mesh_losses import confidence_mean, masked_mean
from heads.parametric import UPRIGHT


class JointMapHead(DenseHead, PosedMeshHead):
    """DPT features -> per-joint heatmaps and root-relative 3D location maps (metres) in two frames.

    Output (``forward``): ``heatmaps`` (B, J, h, w) logits; ``locations`` (B, J, 6, h, w): the
    body-frame (x left, y up, z forward of the root joint) then the camera-frame (OpenCV) position,
    residuals on the buffer ``mean_joints`` (J, 6); ``keypoints_px`` (B, J, 2) the heatmaps'
    expected positions in input pixels; ``joints_body`` and ``joints_camera`` (B, J, 3) the
    location maps averaged under the heatmaps. J is the body model's skeleton (SMPL 24, SMPL-X 22,
    MANO 16), in smplx's joint order; maps are at a quarter of the patch stride.

    The mesh (``mesh``) has no gradient: the maps learn from this head's own terms (``loss_terms``),
    which take the task's keypoint weights.

    Args:
        model_type: ``smpl``, ``smplx`` or ``mano``: which skeleton the maps are for.
        features, layers, reassemble_dims, hidden: the DPT trunk and last convolution (``DenseHead``).
        sigma_cells: width of the Gaussian the heatmap is trained towards, in map cells.
    """

    trained_through_mesh = False

    def __init__(self, model_type: ModelType = "smpl", features: int = 64, layers: Sequence[int] | None = None,
                 reassemble_dims: Sequence[int] | None = None, hidden: int = 64, sigma_cells: float = 1.0) -> None:
        if model_type not in POSE_JOINTS:
            raise ValueError(f"model_type must be one of {sorted(POSE_JOINTS)}, got {model_type!r}")
        super().__init__(features, layers, reassemble_dims, hidden)
        self.model_type = model_type
        self.num_joints = POSE_JOINTS[model_type] + 1
        self.sigma_cells = sigma_cells
        # Root-relative joints (body frame, camera frame) the location maps are residuals on;
        # attach_body_model puts the task's rest skeleton here (upright in the camera), so an
        # untrained head poses the rest body, not a point.
        self.register_buffer("mean_joints", torch.zeros(self.num_joints, 6))

    def attach_body_model(self, body_model: BodyModel) -> None:
        rest = body_model.rest_joints()[:self.num_joints]
        rest = rest - rest[:1]
        self.mean_joints.copy_(torch.cat((rest, rest @ UPRIGHT.T), dim=1))

    @property
    def output_channels(self) -> int:
        return 7 * self.num_joints

    def bind(self, backbone: nn.Module) -> None:
        super().bind(backbone)
        # Zero output: uniform heatmaps (the crop centre) and every joint at its mean to start with.
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def cell_centres(self, size: tuple[int, int], like: Tensor) -> Tensor:
        """(h * w, 2) (x, y) centres of the map's cells in input pixels."""
        stride = self.patch_size / 4
        rows = (torch.arange(size[0], dtype=like.dtype, device=like.device) + 0.5) * stride
        cols = (torch.arange(size[1], dtype=like.dtype, device=like.device) + 0.5) * stride
        y, x = torch.meshgrid(rows, cols, indexing="ij")
        return torch.stack((x.flatten(), y.flatten()), dim=-1)

    def forward(self, features: list[Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
        """``features``: the backbone's (B, rows*cols, D) tokens at ``self.layers``; ``grid``: (rows, cols)."""
        maps = self.output(self.fuse(features, grid))
        size = maps.shape[-2:]
        heatmaps, locations = maps.split([self.num_joints, 6 * self.num_joints], dim=1)
        weights = heatmaps.flatten(2).softmax(-1)  # (B, J, h*w)
        locations = locations.unflatten(1, (self.num_joints, 6)) + self.mean_joints[..., None, None]
        joints = (locations.flatten(3) * weights[:, :, None]).sum(-1)
        return {"heatmaps": heatmaps, "locations": locations, "keypoints_px": weights @ self.cell_centres(size, maps),
                "joints_body": joints[..., :3], "joints_camera": joints[..., 3:]}

    def target_weights(self, keypoints_px: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, J, 2) labelled positions -> (B, J, h*w) Gaussians over the cells, each summing to 1."""
        centres = self.cell_centres(size, keypoints_px)
        sigma_px = self.sigma_cells * self.patch_size / 4
        squared = (centres - keypoints_px[..., None, :]).pow(2).sum(-1)  # (B, J, h*w)
        return (-squared / (2 * sigma_px**2)).softmax(-1)

    def losses(self, out: dict[str, Tensor], keypoints_px: Tensor,
               joints: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample, per-joint heatmap cross-entropy towards Gaussians at the labelled positions
        (B, J) and squared 3D errors of the location maps read there (B, J, 2: body frame, camera
        frame), metres squared.

        ``keypoints_px`` (B, J, 2) and root-relative ``joints`` (B, J, 6: body frame, camera frame)
        in this head's joint order.
        """
        heatmaps = out["heatmaps"]
        target = self.target_weights(keypoints_px.to(heatmaps.dtype), heatmaps.shape[-2:])
        cross_entropy = -(target * heatmaps.flatten(2).log_softmax(-1)).sum(-1)
        read = (out["locations"].flatten(3) * target[:, :, None]).sum(-1)
        return cross_entropy, (read - joints).unflatten(-1, (2, 3)).pow(2).sum(-1)

    def mesh(self, out: dict[str, Tensor], body_model: BodyModel | None, K: Tensor,
             image_size: int) -> dict[str, Tensor]:
        """Body-model parameters, mesh and camera for the predicted joints: the pose by the body
        model's inverse kinematics on the body-frame joints (mean shape), the global orientation
        turned by the rotation that best lays them onto the camera-frame joints, the camera that lays
        the posed joints onto the predicted 2D ones."""
        body_model = require_body_model(self, body_model, "joints")
        with torch.no_grad(), torch.autocast(K.device.type, enabled=False):  # SVDs: float32
            body, camera_frame = out["joints_body"].float(), out["joints_camera"].float()
            global_orient, pose = body_model.inverse_kinematics(body)
            heading = rotation_fitting(body - body[:, :1], camera_frame - camera_frame[:, :1])
            global_orient = heading[:, None] @ global_orient
            betas = global_orient.new_zeros(len(global_orient), body_model.num_betas)
            vertices, joints = body_model(global_orient, pose, betas)
            camera = fit_weak_perspective(joints[:, :body.shape[1]], out["keypoints_px"].float(), K.float(), image_size)
        return out | {"global_orient": global_orient, "pose": pose, "betas": betas, "vertices": vertices,
                      "joints": joints, "camera": camera}

    def loss_terms(self, out: dict[str, Tensor], batch: dict, skeleton: SkeletonLabeller) -> dict[str, Tensor]:
        """``keypoints_2d``: heatmaps towards the labelled 2D keypoints; ``keypoints_3d``: location
        maps towards the root-relative 3D joints in the camera's frame and, for samples with
        parameters, in the body's (the labelled global orientation undone); each over the joints
        labelled with confidence."""
        has = batch["has"]
        keypoints_2d, keypoints_3d, root = skeleton(self.num_joints)
        camera_frame = keypoints_3d[..., :3] - keypoints_3d[:, root:root + 1, :3]
        body = camera_frame @ axis_angle_to_matrix(batch["global_orient"]).to(camera_frame.dtype)
        heatmaps, squared = self.losses(out, keypoints_2d[..., :2], torch.cat((body, camera_frame), dim=-1))
        seen_2d, seen_3d = keypoints_2d[..., 2], keypoints_3d[..., 3] * keypoints_3d[:, root:root + 1, 3]
        locations = (masked_mean(confidence_mean(squared[..., 0], seen_3d), has["keypoints_3d"] & has["params"])
                     + masked_mean(confidence_mean(squared[..., 1], seen_3d), has["keypoints_3d"]))
        return {"keypoints_2d": masked_mean(confidence_mean(heatmaps, seen_2d), has["keypoints_2d"]),
                "keypoints_3d": locations}
