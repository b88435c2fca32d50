"""What mesh recovery asks of a head: a mesh from its output, and the loss terms only it has.

``lightning_modules.MeshRecoveryModule`` places every head's mesh in the camera, matches the
labelled keypoints to its joints, scores and draws it the same way; how the output becomes a mesh
is the head's: a ``ParametricHead`` poses the body model with the parameters it regresses, a
``JointMapHead`` solves them from the joints it reads off its maps, a ``VertexHead`` regresses the
vertices themselves. A new head implements this interface and is swapped in YAML alone.
"""

from abc import abstractmethod
from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor, nn

from body.layouts import POSE_NAME
from body.model import BodyModel, ModelType
from body.rotations import matrix_to_axis_angle
from heads.base import Head


class SkeletonLabels(NamedTuple):
    """A batch's labelled keypoints on the first joints of the model, in the model's joint order; the
    task matches labels to joints by name, so a head's own terms need not know the label layout."""

    keypoints_2d: Tensor  # (B, J, 3) pixels + confidence; 0 where the joint is not labelled
    keypoints_3d: Tensor  # (B, J, 4) metres + confidence
    root: int  # the root joint (pelvis, wrist) among them


SkeletonLabeller = Callable[[int], SkeletonLabels]  # J -> the labels of the model's first J joints


class MeshHead(Head):
    """A head whose output becomes a mesh (vertices, joints and a weak-perspective camera).

    The mesh (``mesh``): ``vertices`` (B, V, 3) and ``joints`` (B, J, 3) in the model's frame, in
    metres (smplx's joints, so labels meet them by name), and ``camera`` (B, 3), ``(s, tx, ty)`` of
    ``body.camera``; a head that has body-model parameters adds ``global_orient`` (B, 1, 3, 3),
    ``pose`` (B, P, 3, 3) and ``betas`` (B, num_betas). The task adds the camera translation and
    the projected keypoints.

    Attributes:
        model_type: ``smpl``, ``smplx`` or ``mano``: the topology and skeleton of the mesh.
        trained_through_mesh: whether the task's keypoint and vertex terms on the mesh train the
            head. A head whose mesh has no gradient (``JointMapHead``: inverse kinematics) says so,
            and names all its terms itself.
    """

    model_type: ModelType
    trained_through_mesh = True

    def run(self, backbone: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The head's output for (B, 3, H, W) ``images``: here from the encoder's last tokens."""
        return self(*backbone.encode(images))

    def attach_body_model(self, body_model: BodyModel) -> None:
        """Adopt what the task's body model fixes (a rest skeleton to start from); called once, at construction."""

    @abstractmethod
    def mesh(self, out: dict[str, Tensor], body_model: BodyModel | None, K: Tensor,
             image_size: int) -> dict[str, Tensor]:
        """``out`` (this head's output) with the mesh added; ``K`` (B, 3, 3) are the input crops'
        intrinsics and ``image_size`` their side, for a head that fits its camera to 2D points.
        ``body_model``: the task's (None when it has none); an error names it if this head needs one."""

    def loss_terms(self, out: dict[str, Tensor], batch: dict, skeleton: SkeletonLabeller) -> dict[str, Tensor]:
        """The terms only this head has, unweighted, as (scalar) means over the samples labelled for
        them; the task weighs each by its ``<name>_weight`` and adds its keypoint and vertex terms
        (``trained_through_mesh``). ``out`` holds the mesh; ``skeleton(J)`` gives the batch's labels
        of the model's first ``J`` joints."""
        return {}

    def orientation(self, mesh: dict[str, Tensor]) -> Tensor | None:
        """(B, 3, 3) predicted global orientation, for terms compared in the body's own frame; None:
        the head has no orientation apart from its vertices (those terms stay in the camera's frame)."""
        return None

    def body_parameters(self, mesh: dict[str, Tensor]) -> dict[str, Tensor]:
        """The body-model parameters behind the mesh as prediction files store them (axis-angle, the
        labels' keys); none for a model-free head."""
        return {}


class PosedMeshHead(MeshHead):
    """A mesh head whose mesh is the body model posed with parameters (regressed, or solved from joints)."""

    def orientation(self, mesh: dict[str, Tensor]) -> Tensor:
        return mesh["global_orient"][:, 0]

    def body_parameters(self, mesh: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"global_orient": matrix_to_axis_angle(mesh["global_orient"][:, 0]),
                POSE_NAME[self.model_type]: matrix_to_axis_angle(mesh["pose"]).flatten(1), "betas": mesh["betas"]}


def require_body_model(head: MeshHead, body_model: BodyModel | None, regresses: str) -> BodyModel:
    """``body_model``, or an error saying that this head needs one to pose a mesh."""
    if body_model is None:
        raise ValueError(f"{type(head).__name__} regresses {regresses}: give the module a body_model "
                         f"(body.BodyModel with model_type and model_path) to pose a mesh on them")
    return body_model
