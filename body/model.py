"""A frozen SMPL / SMPL-X / MANO body model that poses rotation matrices, for heads, losses and converters.

It wraps smplx's ``*Layer`` models (what ``smplx.build_layer`` returns; HMR 2.0 uses them too):
unlike the ``smplx.create`` models they take rotation matrices, which is what the heads regress
(6D -> matrix), and they hold no pose or shape parameters of their own, so nothing here trains.

The model's tensors are kept out of the module tree (``_apply`` still moves them with
``.to(device)`` and dtype casts): so they are not in ``state_dict`` (checkpoints stay free of the
user's licensed model data, and a run resumes with whichever model files are installed), and
DDP does not broadcast the large blend-shape arrays as buffers on every step.
"""

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import smplx
import torch
import torch.nn.functional as F
from smplx.utils import Struct
from torch import Tensor, nn

from body.layouts import JOINT_NAMES_OF, POSE_JOINTS, POSE_NAME
from body.rotations import axis_angle_to_matrix, rotation_between, rotation_fitting

ModelType = Literal["smpl", "smplx", "mano"]

_WHERE = {"smpl": "https://smpl.is.tue.mpg.de", "smplx": "https://smpl-x.is.tue.mpg.de",
          "mano": "https://mano.is.tue.mpg.de"}


def model_file(model_type: str, model_path: str | Path, gender: str = "neutral") -> Path:
    """The file ``smplx`` would load for ``model_type`` under the folder ``model_path``: npz first
    (no pickle), then the official pkl; an error naming where to get it when neither is there."""
    if model_type not in POSE_JOINTS:
        raise ValueError(f"model_type must be one of {sorted(POSE_JOINTS)}, got {model_type!r}")
    stem = "MANO_RIGHT" if model_type == "mano" else f"{model_type.upper()}_{gender.upper()}"
    folder = Path(model_path) / model_type
    candidates = [folder / f"{stem}.{ext}" for ext in ("npz", "pkl")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {model_type.upper()} model file in {folder.resolve()}: looked for "
        f"{' or '.join(c.name for c in candidates)} (model_path is the folder holding {model_type}/, as for "
        f"smplx.create). The model is licensed: download it from {_WHERE[model_type]}; official .pkl files hold "
        f"chumpy objects, so convert them once with `{convert_command('DOWNLOADED.pkl', model_path)}`. Or write "
        f"synthetic stand-ins for tests and demos with `crocoman-data body-models --out DIR`")


def convert_command(path: str | Path, model_path: str | Path) -> str:
    """The command that turns an official SMPL / MANO pickle into files of plain arrays under ``model_path``."""
    return f"crocoman-data body-models --convert {path} --out {model_path}"


@contextmanager
def official_pickle_hint(path: Path, model_path: str | Path) -> Iterator[None]:
    """Around a smplx load of ``path``: an official pickle fails there because unpickling it imports
    chumpy (missing, or broken on Python 3.11+); say which file and how to convert it instead."""
    try:
        yield
    except Exception as error:
        missing = isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "chumpy"
        frames = traceback.extract_tb(error.__traceback__)
        if not missing and not any("chumpy" in Path(frame.filename).parts for frame in frames):
            raise
        raise RuntimeError(
            f"{path} is an official model file holding chumpy objects, which smplx cannot load without a working "
            f"chumpy ({type(error).__name__}: {error}); convert it once to plain arrays with "
            f"`{convert_command(path, model_path)}`") from error


class BodyModel(nn.Module):
    """Frozen SMPL / SMPL-X / MANO: rotations and shape -> vertices and joints in the model frame.

    Pose rotations are relative to each joint's parent; no translation is applied (heads predict a
    camera instead, see ``body.camera``). SMPL-X hands, jaw and eyes stay at rest (flat hands);
    MANO is the right hand with flat-hand mean and no PCA, as our hand labels are.

    Attributes:
        num_pose_joints: rotations in ``pose`` (23 SMPL, 21 SMPL-X body, 15 MANO).
        pose_name: the label key those rotations come from (``body_pose`` / ``hand_pose``).
        num_vertices, num_joints: sizes of the outputs; joints are smplx's (e.g. SMPL: 24 skeleton
            joints then 21 surface points).
        joint_names: the name of each output joint, in smplx's naming (``pelvis``, ``left_wrist``,
            ``nose``, ``left_big_toe`` ...; MANO: ``wrist``, ``index1`` ... ``thumb3``).
        faces: (F, 3) long triangle indices, on the model's device.
        layer: the smplx ``*Layer`` module (``v_template``, ``J_regressor``, ``lbs_weights`` ...).

    Args:
        model_type: ``smpl``, ``smplx`` or ``mano``.
        model_path: the folder holding ``<model_type>/<FILE>`` (as for ``smplx.create``).
        gender: SMPL / SMPL-X file gender (``neutral``, ``male``, ``female``).
        num_betas: shape coefficients used.
    """

    def __init__(self, model_type: ModelType, model_path: str, gender: str = "neutral", num_betas: int = 10) -> None:
        super().__init__()
        path = model_file(model_type, model_path, gender)
        kwargs = {"gender": gender, "num_betas": num_betas, "ext": path.suffix[1:]}
        if model_type == "smpl" and path.suffix == ".npz":  # smplx's SMPL reads only pickles: hand it the arrays
            kwargs["data_struct"] = Struct(**np.load(path, allow_pickle=False))
        if model_type != "smpl":
            kwargs |= {"use_pca": False, "flat_hand_mean": True}
        if model_type == "mano":
            kwargs["is_rhand"] = True
        with official_pickle_hint(path, model_path):
            layer = smplx.build_layer(str(model_path), model_type=model_type, **kwargs).requires_grad_(False)
        # Outside _modules: neither in state_dict nor among the buffers DDP broadcasts (see _apply).
        self.__dict__["layer"] = layer
        self.model_type = model_type
        self.num_betas = num_betas
        self.num_pose_joints = POSE_JOINTS[model_type]
        self.pose_name = POSE_NAME[model_type]
        self.num_vertices = layer.v_template.shape[0]
        with torch.no_grad():
            self.num_joints = layer().joints.shape[1]
        self.joint_names = JOINT_NAMES_OF[model_type][:self.num_joints]
        if len(self.joint_names) != self.num_joints:
            raise NotImplementedError(f"{model_type}: smplx outputs {self.num_joints} joints, only "
                                      f"{len(self.joint_names)} are named")

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "BodyModel":
        """Device moves and dtype casts reach the hidden smplx layer too."""
        super()._apply(fn, recurse)
        self.layer._apply(fn, recurse)
        return self

    @property
    def faces(self) -> Tensor:
        return self.layer.faces_tensor

    def joint_regressor(self) -> Tensor:
        """(num_joints, V): the weights that give ``forward``'s joints from its vertices, for
        model-free heads. The model's J_regressor rows (exact at rest, where smplx regresses them,
        and the usual approximation once posed), then the joints smplx reads off the surface:
        one-hot rows for vertex joints (fingertips, toes ...) and, for SMPL-X, barycentric rows for
        its face landmarks."""
        layer = self.layer
        rows = [layer.J_regressor]
        if self.model_type != "mano":  # smplx's MANO layer adds no surface joints
            rows.append(nn.functional.one_hot(layer.vertex_joint_selector.extra_joints_idxs, self.num_vertices))
        if self.model_type == "smplx":
            corners = layer.faces_tensor[layer.lmk_faces_idx]  # (L, 3)
            rows.append(torch.zeros(len(corners), self.num_vertices, dtype=layer.lmk_bary_coords.dtype,
                                    device=corners.device).scatter_add_(1, corners, layer.lmk_bary_coords))
        regressor = torch.cat([row.to(layer.J_regressor.dtype) for row in rows])
        if len(regressor) != self.num_joints:
            raise NotImplementedError(f"{self.model_type}: smplx outputs {self.num_joints} joints, the regressor "
                                      f"covers {len(regressor)} (use_face_contour is not supported)")
        return regressor

    def forward(self, global_orient: Tensor, pose: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, 3, 3), (B, P, 3, 3), (B, num_betas) -> vertices (B, V, 3), joints (B, J, 3), metres."""
        if pose.shape[1:] != (self.num_pose_joints, 3, 3) or betas.shape[1:] != (self.num_betas,):
            raise ValueError(f"{self.model_type} takes pose (B, {self.num_pose_joints}, 3, 3) and betas "
                             f"(B, {self.num_betas}), got {tuple(pose.shape)} and {tuple(betas.shape)}")
        dtype = self.layer.v_template.dtype
        with torch.autocast(pose.device.type, enabled=False):  # mm-level outputs: no bf16 blend shapes
            output = self.layer(global_orient=global_orient.to(dtype), betas=betas.to(dtype),
                                **{self.pose_name: pose.to(dtype)})
        return output.vertices, output.joints

    def rest_joints(self) -> Tensor:
        """(J, 3) skeleton joints of the mean shape (zero betas) at rest."""
        return self.layer.J_regressor @ self.layer.v_template

    @torch.no_grad()
    def inverse_kinematics(self, joints: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P + 1, 3) skeleton joint positions (smplx order, any frame and scale) -> ``forward``'s
        ``global_orient`` (B, 1, 3, 3) and ``pose`` (B, P, 3, 3) that point every bone of the rest
        skeleton (zero betas) along the given one: analytic swing (HybrIK's), without twist.

        Each joint's rotation, in the global frame, takes its rest bone to the target bone; a joint
        with several children (pelvis, upper spine) takes the best fit to all of them (Kabsch),
        end joints keep their parent's. Positions only fix swings: the twist about each bone is
        left at rest, which moves the surface, not the joints.
        """
        count = self.num_pose_joints + 1
        if joints.shape[1:] != (count, 3):
            raise ValueError(f"{self.model_type} inverse kinematics takes (B, {count}, 3) joints, "
                             f"got {tuple(joints.shape)}")
        with torch.autocast(joints.device.type, enabled=False):  # SVD and determinants: no bf16 kernels
            return self._inverse_kinematics(joints.to(self.layer.v_template.dtype))

    def _inverse_kinematics(self, joints: Tensor) -> tuple[Tensor, Tensor]:
        count = self.num_pose_joints + 1
        parents = self.layer.parents[:count].tolist()
        rest = self.rest_joints()[:count]
        eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand(len(joints), 3, 3)
        rotations: list[Tensor] = []
        for joint, parent in enumerate(parents):
            parent_rotation = eye if parent < 0 else rotations[parent]
            children = [child for child in range(count) if parents[child] == joint]
            if not children:
                rotations.append(parent_rotation)
                continue
            source = F.normalize(rest[children] - rest[joint], dim=-1).expand(len(joints), -1, -1)
            target = F.normalize(joints[:, children] - joints[:, joint:joint + 1], dim=-1)
            if len(children) == 1:
                swung = (parent_rotation @ source[:, 0, :, None])[..., 0]
                rotations.append(rotation_between(swung, target[:, 0]) @ parent_rotation)
            else:
                rotations.append(rotation_fitting(source, target))
        rotations = torch.stack(rotations, dim=1)
        local = torch.cat((rotations[:, :1], rotations[:, parents[1:]].mT @ rotations[:, 1:]), dim=1)
        return local[:, :1], local[:, 1:]

    def from_axis_angle(self, global_orient: Tensor, pose: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Labels as stored in shards: (B, 3), (B, 3P) axis-angle and (B, num_betas) -> ``forward``.

        SMPL-X takes the first 21 of SMPL's 23 body rotations (SMPL's last two are its hand joints).
        """
        if pose.shape[1:] != (3 * self.num_pose_joints,):
            hint = " (SMPL labels: pass pose[:, :63])" if self.model_type == "smplx" else ""
            raise ValueError(f"{self.model_type} takes {3 * self.num_pose_joints} axis-angle pose values, got "
                             f"{tuple(pose.shape)}{hint}")
        dtype = self.layer.v_template.dtype
        with torch.autocast(pose.device.type, enabled=False):
            rotations = axis_angle_to_matrix(pose.to(dtype).reshape(len(pose), -1, 3))
            global_rotation = axis_angle_to_matrix(global_orient.to(dtype))[:, None]
        return self(global_rotation, rotations, betas)

    def extra_repr(self) -> str:
        return (f"{self.model_type}, vertices={self.num_vertices}, joints={self.num_joints}, "
                f"betas={self.num_betas}")
