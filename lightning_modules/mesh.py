"""Body and hand mesh recovery, model-based (SMPL / SMPL-X / MANO through smplx) or model-free.

The head decides which (``heads.mesh_head.MeshHead``): ``heads.ParametricHead`` regresses
body-model parameters, which the module's ``body_model`` turns into vertices and joints;
``heads.JointMapHead`` regresses joints, which the body model's inverse kinematics turns into
parameters; ``heads.VertexHead`` regresses the vertices itself; each names the loss terms only it
has. Everything after that (camera, joint matching, keypoint and vertex terms, metrics, pictures,
predictions) is shared, so bodies and hands, parametric or not, differ only in YAML.
"""

from functools import cached_property, partial

from lightning import LightningDataModule
from torch import Tensor
from torchmetrics import MetricCollection
from torchvision.utils import make_grid

from body.camera import project, weak_perspective_to_translation
from body.model import BodyModel
from body.rotations import axis_angle_to_matrix
from heads.mesh_head import MeshHead, SkeletonLabels
from heads.mesh_losses import keypoint_2d_loss, keypoint_3d_loss, masked_mean, vertex_loss
from lightning_modules.base import StepOutput
from lightning_modules.finetune import FinetuneTask
from lightning_modules.mesh_metrics import FScore, MeanPointError
from lightning_modules.mesh_render import draw_keypoints, overlay_mesh

KEYPOINT_ALIASES = {"mid_hip": "pelvis"}  # OpenPose's MidHip is SMPL's pelvis (as 4D-Humans maps it)


class MeshRecoveryModule(FinetuneTask):
    """Regress a body or hand mesh from a person crop.

    Batches follow ``datamodules.MeshDataModule``: ``image``, ``K`` (intrinsics of the input
    crop), ``keypoints_2d`` (B, J, 3), ``keypoints_3d`` (B, J, 4), ``global_orient``, ``body_pose``
    or ``hand_pose`` (axis-angle), ``betas``, ``vertices`` and ``has`` flags (``keypoints_2d``,
    ``keypoints_3d``, ``params``, ``vertices``). The predicted mesh is placed in the camera with the
    head's weak-perspective camera and projected with the crop's own ``K``.

    Labels and predictions are compared on the joints whose names they share: the label keypoint
    names come from the DataModule (``keypoint_names``: the manifest's, or 4D-Humans' OpenPose +
    extra order), the model's from smplx (``BodyModel.joint_names``), so SMPL labels meet SMPL-X's
    22 body joints and 4D-Humans' 44 keypoints its 25 OpenPose ones (``mid_hip`` is the pelvis),
    whatever the order. Without names (no DataModule) label keypoint ``i`` is model joint ``i``.

    Logged: ``loss`` and its terms ``loss/<term>``; per validation/test epoch ``mpjpe``,
    ``pa_mpjpe``, ``pve``, ``pa_pve`` in mm and the F-scores ``f@<t>mm`` (hands), plus a picture of
    meshes over the first validation images (``val/meshes``).

    Args:
        head: a ``heads.mesh_head.MeshHead``.
        body_model: ``body.BodyModel`` (smpl / smplx / mano). Required with ``ParametricHead`` and
            ``JointMapHead``; with ``VertexHead`` optional: it then turns labelled parameters into
            target vertices.
        root_joint: among the joints compared, the one 3D errors are taken relative to (pelvis, wrist).
        keypoints_2d_weight, keypoints_3d_weight, vertices_weight, params_weight, prior_weight:
            loss weights, each of the term of its name (the head's own terms included:
            ``ParametricHead``'s ``params`` and ``prior``; a ``JointMapHead`` trains on two terms of
            its own, its heatmaps and its location maps, named and weighted as the keypoint terms);
            a term's samples are those whose ``has`` flag is set.
        body_frame_3d: compare 3D joints and vertices as if the prediction had the labelled global
            orientation (samples with parameters; parametric heads): the 3D terms then supervise the
            pose alone, and the orientation learns from its own rotation term and the 2D keypoints.
            Where the heading is hard to read from the image, camera-frame 3D terms otherwise pull
            every limb towards the average over headings, a collapsed body.
        fscore_thresholds_mm: vertex F-scores to report (FreiHAND: 5 and 15).
        pictures: how many validation samples the mesh picture shows.
        **kwargs: ``freeze_encoder``, ``layer_decay`` of ``FinetuneTask``; backbone, head,
            ``pretrained`` and optimiser arguments of ``CrocoTask``.
    """

    head: MeshHead

    def __init__(self, *args, body_model: BodyModel | None = None, root_joint: int = 0,
                 keypoints_2d_weight: float = 1.0, keypoints_3d_weight: float = 1.0,
                 vertices_weight: float = 1.0, params_weight: float = 0.1, prior_weight: float = 1e-3,
                 body_frame_3d: bool = False,
                 fscore_thresholds_mm: tuple[float, ...] = (), pictures: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.body_model = body_model
        self.label_names: tuple[str, ...] | None = None
        if body_model is not None:
            self.head.attach_body_model(body_model)

    def configure_from_data(self, datamodule: LightningDataModule | None) -> None:
        self.label_names = getattr(datamodule, "keypoint_names", None)
        self.__dict__.pop("joint_pairs", None)

    @cached_property
    def joint_pairs(self) -> tuple[list[int], list[int]] | None:
        """(label keypoint indices, model joint indices) of the shared joints in model order, or None
        when either side has no names (then compared by position)."""
        model_names = getattr(self.body_model if self.body_model is not None else self.head, "joint_names", None)
        if self.label_names is None or model_names is None:
            return None
        label_index = {KEYPOINT_ALIASES.get(name, name): i for i, name in enumerate(self.label_names)}
        pairs = [(label_index[name], joint) for joint, name in enumerate(model_names) if name in label_index]
        if not pairs:
            raise ValueError(f"no keypoint of the labels ({list(self.label_names)[:5]}...) is a joint of the model "
                             f"({list(model_names)[:5]}...): set the DataModule's keypoint_names to smplx's names")
        return [label for label, _ in pairs], [joint for _, joint in pairs]

    def root_indices(self) -> tuple[int, int]:
        """(label keypoint, model joint) indices of ``root_joint``."""
        pairs, root = self.joint_pairs, self.hparams.root_joint
        return (pairs[0][root], pairs[1][root]) if pairs is not None else (root, root)

    def shared_joints(self, predicted: Tensor, labelled: Tensor) -> tuple[Tensor, Tensor]:
        """The joints (B, J, ...) of a prediction and of the labels that correspond, in the same order."""
        pairs = self.joint_pairs
        if pairs is None:
            count = min(predicted.shape[1], labelled.shape[1])
            return predicted[:, :count], labelled[:, :count]
        return predicted[:, pairs[1]], labelled[:, pairs[0]]

    def configure_metrics(self) -> None:
        joints = MetricCollection({"mpjpe": MeanPointError(root=self.hparams.root_joint),
                                   "pa_mpjpe": MeanPointError(procrustes=True, root=self.hparams.root_joint)})
        vertices = MetricCollection({"pve": MeanPointError(root=None),
                                     "pa_pve": MeanPointError(procrustes=True, root=None),
                                     **{f"f@{t:g}mm": FScore(t) for t in self.hparams.fscore_thresholds_mm}})
        for stage in ("val", "test"):
            setattr(self, f"{stage}_joint_metrics", joints.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_vertex_metrics", vertices.clone(prefix=f"{stage}/"))

    @property
    def faces(self) -> Tensor:
        """The mesh topology, for pictures: the body model's, or the model-free head's own."""
        return self.body_model.faces if self.body_model is not None else self.head.faces

    def forward(self, images: Tensor, K: Tensor) -> dict[str, Tensor]:
        """The head's mesh (``heads.mesh_head.MeshHead.mesh``) plus ``translation`` (B, 3) into the
        camera and the projected ``keypoints_2d`` (B, J, 2) in pixels of the input."""
        out = self.head.mesh(self.head.run(self.backbone, images), self.body_model, K, images.shape[-1])
        out["translation"] = weak_perspective_to_translation(out["camera"], K[:, 0, 0], images.shape[-1])
        out["keypoints_2d"] = project(out["joints"] + out["translation"][:, None], K)
        return out

    def skeleton_labels(self, batch: dict, count: int) -> SkeletonLabels:
        """The labelled 2D (B, count, 3) and 3D (B, count, 4) keypoints of the model's first ``count``
        joints (its skeleton), in its order, and the root among them; skeleton joints without a label
        get confidence 0."""
        labels, joints = self.joint_pairs or (list(range(count)), list(range(count)))
        kept = [(label, joint) for label, joint in zip(labels, joints) if joint < count]
        labels, joints = [label for label, _ in kept], [joint for _, joint in kept]
        keypoints_2d = batch["keypoints_2d"].new_zeros(len(batch["image"]), count, 3)
        keypoints_3d = batch["keypoints_3d"].new_zeros(len(batch["image"]), count, 4)
        keypoints_2d[:, joints] = batch["keypoints_2d"][:, labels]
        keypoints_3d[:, joints] = batch["keypoints_3d"][:, labels]
        return SkeletonLabels(keypoints_2d, keypoints_3d, self.root_indices()[1])

    def targets(self, batch: dict) -> tuple[Tensor | None, Tensor | None]:
        """Root-relative target vertices in the prediction's topology and which samples have them.

        Labelled parameters go through the body model (so any labelled topology works and flipped
        samples keep their vertices); samples without parameters use stored vertices when their
        count matches.
        """
        has = batch["has"]
        label_root, model_root = self.root_indices()
        stored = batch.get("vertices")
        if self.body_model is None:
            if stored is None:
                return None, None
            return stored - batch["keypoints_3d"][:, label_root:label_root + 1, :3], has["vertices"]
        pose = batch[self.body_model.pose_name][:, :3 * self.body_model.num_pose_joints]
        vertices, joints = self.body_model.from_axis_angle(batch["global_orient"], pose, batch["betas"])
        vertices = vertices - joints[:, model_root:model_root + 1]
        if stored is not None and stored.shape[1] == vertices.shape[1]:
            from_labels = stored - batch["keypoints_3d"][:, label_root:label_root + 1, :3]
            vertices = vertices.where(has["params"][:, None, None], from_labels)
            return vertices, has["params"] | has["vertices"]
        return vertices, has["params"]

    def losses(self, out: dict[str, Tensor], batch: dict,
               targets: tuple[Tensor | None, Tensor | None]) -> dict[str, Tensor]:
        """Weighted loss terms: the keypoint and vertex terms on the mesh (for a head trained through
        it), then the head's own; ``targets`` is ``self.targets(batch)``, computed once per batch by
        the caller (evaluation scores the same target vertices)."""
        terms = self.mesh_terms(out, batch, targets) if self.head.trained_through_mesh else {}
        terms |= self.head.loss_terms(out, batch, partial(self.skeleton_labels, batch))
        return {name: self.hparams[f"{name}_weight"] * term for name, term in terms.items()}

    def mesh_terms(self, out: dict[str, Tensor], batch: dict,
                   targets: tuple[Tensor | None, Tensor | None]) -> dict[str, Tensor]:
        """Unweighted ``keypoints_2d`` (projected), ``keypoints_3d`` and ``vertices`` (root-relative)
        terms of the predicted mesh against the labels it shares joints with."""
        hp, has = self.hparams, batch["has"]
        pred_joints, pred_vertices = out["joints"], out["vertices"]
        orientation = self.head.orientation(out)
        if hp.body_frame_3d and orientation is not None:
            align = self.labelled_orientation(orientation, batch)
            pred_joints, pred_vertices = pred_joints @ align.mT, pred_vertices @ align.mT
        image_size = batch["image"].shape[-1]
        terms = {
            "keypoints_2d": masked_mean(
                keypoint_2d_loss(*self.shared_joints(out["keypoints_2d"], batch["keypoints_2d"]), image_size),
                has["keypoints_2d"]),
            "keypoints_3d": masked_mean(
                keypoint_3d_loss(*self.shared_joints(pred_joints, batch["keypoints_3d"]), hp.root_joint),
                has["keypoints_3d"]),
        }
        target_vertices, has_vertices = targets
        if target_vertices is not None:
            pred_vertices = pred_vertices - pred_joints[:, self.root_indices()[1]][:, None]
            terms["vertices"] = masked_mean(vertex_loss(pred_vertices, target_vertices), has_vertices)
        return terms

    @staticmethod
    def labelled_orientation(predicted: Tensor, batch: dict) -> Tensor:
        """(B, 3, 3) rotation taking the ``predicted`` global orientation (B, 3, 3) to the labelled one
        (identity for samples without parameters): applied to predicted points, it swaps the orientation."""
        labelled = axis_angle_to_matrix(batch["global_orient"]).to(predicted.dtype)
        labelled = labelled.where(batch["has"]["params"][:, None, None], predicted)
        return labelled @ predicted.mT

    def forward_batch(self, batch: dict, batch_idx: int, stage: str) -> StepOutput:
        """Evaluation logs the total only: per-term validation curves would be new names in every run's record."""
        out, targets = self(batch["image"], batch["K"]), self.targets(batch)
        terms = self.losses(out, batch, targets)
        return StepOutput(sum(terms.values()), terms if stage == "train" else {}, (out, targets))

    def update_metrics(self, batch: dict, outputs: tuple[dict[str, Tensor], tuple[Tensor | None, Tensor | None]],
                       stage: str) -> None:
        """Joint errors on the samples with 3D keypoints, vertex errors on those with target vertices."""
        if stage == "train":
            return
        out, (target_vertices, has_vertices) = outputs
        size = len(batch["image"])
        labelled = batch["has"]["keypoints_3d"]
        if labelled.any():
            predicted, target = self.shared_joints(out["joints"][labelled], batch["keypoints_3d"][labelled])
            getattr(self, f"{stage}_joint_metrics").update(predicted, target[..., :3])
        if target_vertices is not None and has_vertices.any():
            model_root = self.root_indices()[1]
            pred_vertices = out["vertices"] - out["joints"][:, model_root:model_root + 1]
            getattr(self, f"{stage}_vertex_metrics").update(pred_vertices[has_vertices], target_vertices[has_vertices])
        self.log_dict(getattr(self, f"{stage}_joint_metrics"), batch_size=size)
        self.log_dict(getattr(self, f"{stage}_vertex_metrics"), batch_size=size)

    def pictures(self, batch: dict, outputs: tuple[dict[str, Tensor], tuple], stage: str) -> dict[str, Tensor]:
        return {f"{stage}/meshes": self.picture(batch, outputs[0])}

    def picture(self, batch: dict, out: dict[str, Tensor]) -> Tensor:
        """Per sample: labelled (green) and predicted (red) keypoints | predicted mesh over the image."""
        tiles = []
        for i in range(min(self.hparams.pictures, len(batch["image"]))):
            image = batch["image"][i]
            points = draw_keypoints(image, batch["keypoints_2d"][i], (40, 200, 40))
            points = draw_keypoints(points, out["keypoints_2d"][i].float(), (230, 40, 40))
            mesh = overlay_mesh(image, out["vertices"][i] + out["translation"][i], self.faces, batch["K"][i])
            tiles += [points, mesh]
        return make_grid(tiles, nrow=2, padding=2, pad_value=1.0)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Camera-frame vertices and joints, projected keypoints and, for heads with body-model
        parameters, those in axis-angle: what ``callbacks.MeshPredictionWriter`` writes per image."""
        out = self(batch["image"], batch["K"])
        prediction = {"key": batch["key"], "image": batch["image"], "K": batch["K"],
                      "vertices": out["vertices"] + out["translation"][:, None],
                      "joints": out["joints"] + out["translation"][:, None],
                      "keypoints_2d": out["keypoints_2d"], "translation": out["translation"], "faces": self.faces}
        return prediction | self.head.body_parameters(out)
