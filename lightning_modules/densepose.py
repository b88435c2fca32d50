"""DensePose: per-pixel body part and surface (U, V) coordinates of a person crop, ``heads.DenseHead``."""

import colorsys
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import make_grid

from heads.dense import NUM_PARTS
from lightning_modules.base import StepOutput
from lightning_modules.dense_metrics import HALF_PART_KAPPA, dense_prediction, densepose_metrics, target_maps
from lightning_modules.finetune import FinetuneTask

ClassWeighting = Literal["inverse_sqrt", "median_frequency"]


def part_class_weights(pixel_counts: Tensor, method: ClassWeighting) -> Tensor:
    """Cross-entropy weights for the 25 classes from their pixel counts.

    ``inverse_sqrt``: 1 / sqrt(frequency), a mild boost of small parts (hands, feet) against the
    background, which covers most pixels of a crop. ``median_frequency`` (Eigen & Fergus 2015):
    median frequency / frequency, stronger: every class weighs about as much as the median class.
    Classes not counted yet get 1 (they are in no target, so their weight does not matter).
    """
    frequency = pixel_counts.double() / pixel_counts.sum().clamp_min(1)
    seen = pixel_counts > 0
    weights = torch.ones_like(frequency)
    if method == "inverse_sqrt":
        weights[seen] = frequency[seen].rsqrt()
    elif method == "median_frequency":
        weights[seen] = frequency[seen].median() / frequency[seen]
    else:
        raise ValueError(f"class_weighting must be 'inverse_sqrt' or 'median_frequency', got {method!r}")
    return weights.float()


def densepose_losses(outputs: dict[str, Tensor], iuv: Tensor, part_class_weight: Tensor | None = None,
                     uv_beta: float = 0.1) -> dict[str, Tensor]:
    """Part cross-entropy over labelled pixels and smooth-L1 on U, V over labelled foreground pixels.

    Only the GT part's U and V channels are scored: the other 23 charts say nothing about this
    pixel. Unlabelled pixels (255, sparse DensePose-COCO points) count in neither term. Both terms
    are means over the pixels they score (weighted by ``part_class_weight`` of the GT class for the
    parts, as ``F.cross_entropy`` does), computed in float32 and without a host sync, so an
    all-unlabelled batch gives 0 rather than NaN.
    """
    target, target_uv, labelled = target_maps(iuv)
    per_pixel = F.cross_entropy(outputs["part_logits"].float(), target, reduction="none")
    weight = labelled.float() if part_class_weight is None else part_class_weight[target] * labelled
    parts = (per_pixel * weight).sum() / weight.sum().clamp_min(1e-12)
    foreground = (target > 0).float()
    channel = (target - 1).clamp_min(0)[:, None]
    uv = torch.cat([outputs["u"].gather(1, channel), outputs["v"].gather(1, channel)], dim=1).float()
    per_pixel_uv = F.smooth_l1_loss(uv, target_uv, beta=uv_beta, reduction="none").sum(dim=1)
    return {"parts": parts, "uv": (per_pixel_uv * foreground).sum() / foreground.sum().clamp_min(1)}


def _palette(values: list[tuple[float, float, float]]) -> Tensor:
    return torch.tensor([colorsys.hsv_to_rgb(*hsv) for hsv in values], dtype=torch.float32)


# Background black; neighbouring part ids get distant hues (stride 7 of 24) and alternate brightness.
PART_COLOURS = torch.cat([torch.zeros(1, 3), _palette([((7 * i % NUM_PARTS) / NUM_PARTS, 0.85, 1.0 - 0.35 * (i % 2))
                                                       for i in range(NUM_PARTS)])])
# U, V in [0, 1] from blue (0) through green to red (1).
CHART_COLOURS = _palette([((1 - t / 255) * 2 / 3, 1.0, 1.0) for t in range(256)])


def _overlay(images: Tensor, colours: Tensor, where: Tensor, alpha: float = 0.7) -> Tensor:
    """``colours`` (B, H, W, 3) blended over ``images`` (B, 3, H, W) where ``where`` (B, H, W)."""
    blend = alpha * where[:, None].float()
    return images * (1 - blend) + colours.permute(0, 3, 1, 2) * blend


def _chart(values: Tensor) -> Tensor:
    return CHART_COLOURS[(values.clamp(0, 1) * 255).round().long()]


def _prediction_columns(images: Tensor, parts: Tensor, uv: Tensor) -> list[Tensor]:
    """Predicted parts, U and V over the image, drawn wherever a part is predicted."""
    predicted = parts > 0
    return [_overlay(images, PART_COLOURS[parts], predicted),
            *(_overlay(images, _chart(uv[:, axis]), predicted) for axis in range(2))]


def densepose_picture(images: Tensor, parts: Tensor, uv: Tensor, iuv: Tensor | None = None,
                      max_rows: int = 4) -> Tensor:
    """One row per crop as a (3, H, W) grid: image | parts | U | V; with labels ``iuv``, each of the
    three as ground truth, then prediction.

    Ground truth is drawn only where it is labelled foreground (sparse annotations show as points),
    predictions wherever a part is predicted.
    """
    images, parts, uv = images[:max_rows].float().cpu(), parts[:max_rows].cpu(), uv[:max_rows].cpu()
    predicted = _prediction_columns(images, parts, uv)
    columns = [images, *predicted]
    if iuv is not None:
        target, target_uv, _ = target_maps(iuv[:max_rows].cpu())
        truth = _prediction_columns(images, target, target_uv)
        columns = [images, *(column for pair in zip(truth, predicted) for column in pair)]
    return make_grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns), padding=2, pad_value=1.0)


class DensePoseModule(FinetuneTask):
    """Predict DensePose part and chart coordinates for every pixel of a person crop.

    Batches carry ``image`` (B, 3, S, S) in [0, 1], ``iuv`` (B, 3, S, S) uint8 (part id, 255 =
    unlabelled; U, V x 255) and ``key``; the DataModule is ``LabelledDataModule`` with
    ``label_keys: [iuv.png]``. Logged: ``loss``, ``loss/parts``, ``loss/uv`` per step;
    ``val/loss`` and, per epoch, ``val/miou`` (25 classes), ``val/miou_fg`` (24 parts),
    ``val/pixel_acc``, ``val/uv_error`` and ``val/gps_ap``, ``val/gps_ap50``, ``val/gps_ap75``
    (``lightning_modules.dense_metrics`` says how these relate to DensePose-COCO's protocol),
    likewise ``test/``; and a picture of the first validation batch (``val/densepose``).

    Args:
        part_weight: weight of the part cross-entropy in the loss.
        uv_weight: weight of the U, V smooth-L1.
        uv_beta: smooth-L1 transition point, in chart units: quadratic below, L1 above.
        class_balanced: weight the part cross-entropy by class. Weights come from the pixel counts
            of every class in the training batches seen so far (running totals, not one batch's
            counts, which would jump from batch to batch; restarted on resume; under DDP rank 0's,
            which DDP broadcasts with the other buffers at every step), by ``class_weighting``.
        class_weighting: ``inverse_sqrt`` or ``median_frequency`` (see ``part_class_weights``).
        kappa: GPS normaliser in part-chart units (default: half a part scores 0.5).
        picture_rows: crops in the validation picture (0: none).
        **kwargs: ``freeze_encoder``, ``layer_decay`` of ``FinetuneTask``; backbone, head
            (``heads.DenseHead``), ``pretrained`` and optimiser arguments of ``CrocoTask``.
    """

    picture_stages = ("val", "test")

    def __init__(self, *args, part_weight: float = 1.0, uv_weight: float = 1.0, uv_beta: float = 0.1,
                 class_balanced: bool = False, class_weighting: ClassWeighting = "inverse_sqrt",
                 kappa: float = HALF_PART_KAPPA, picture_rows: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def configure_losses(self) -> None:
        part_class_weights(torch.ones(1 + NUM_PARTS), self.hparams.class_weighting)  # reject a bad name now
        self.register_buffer("part_pixel_counts", torch.zeros(1 + NUM_PARTS, dtype=torch.long), persistent=False)

    def configure_metrics(self) -> None:
        metrics = densepose_metrics(self.hparams.kappa)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) images in [0, 1] -> ``part_logits`` (B, 25, H, W), ``u``, ``v`` (B, 24, H, W) in [0, 1]."""
        return self.head.run(self.backbone, images)

    def forward_batch(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> StepOutput:
        """The weighted total of the unweighted terms it logs; class weights from the running counts (of
        training batches) when ``class_balanced``."""
        iuv = batch["iuv"]
        if self.hparams.class_balanced and stage == "train":
            target, _, labelled = target_maps(iuv)
            self.part_pixel_counts += torch.bincount(target[labelled], minlength=1 + NUM_PARTS)
        outputs = self(batch["image"])
        weight = (part_class_weights(self.part_pixel_counts, self.hparams.class_weighting)
                  if self.hparams.class_balanced else None)
        terms = densepose_losses(outputs, iuv, weight, self.hparams.uv_beta)
        total = self.hparams.part_weight * terms["parts"] + self.hparams.uv_weight * terms["uv"]
        return StepOutput(total, terms, outputs)

    def update_metrics(self, batch: dict[str, Tensor], outputs: dict[str, Tensor], stage: str) -> None:
        """Evaluation's, logged at its end (``_log_metrics``)."""
        if stage == "train":
            return
        parts, uv = dense_prediction(outputs["part_logits"], outputs["u"], outputs["v"])
        getattr(self, f"{stage}_metrics").update(parts, uv, batch["iuv"])

    def pictures(self, batch: dict[str, Tensor], outputs: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        if not self.hparams.picture_rows:
            return {}
        parts, uv = dense_prediction(outputs["part_logits"], outputs["u"], outputs["v"])
        return {f"{stage}/densepose": densepose_picture(batch["image"], parts, uv, batch["iuv"],
                                                        self.hparams.picture_rows)}

    def _log_metrics(self, stage: str) -> None:
        """torchmetrics has already reduced the states over ranks; sync_dist only averages equal values (and keeps
        Lightning from warning about unsynchronised epoch-level logging)."""
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        """Per crop: ``parts`` (B, H, W) ids, ``u``, ``v`` (B, H, W) in [0, 1] of the predicted part (0 on the
        background), ``confidence`` (B, H, W) the predicted part's probability, and ``iuv`` (B, 3, H, W) uint8 in
        the shards' layout (what a writer saves as iuv.png)."""
        outputs = self(batch["image"])
        parts, uv = dense_prediction(outputs["part_logits"], outputs["u"], outputs["v"])
        iuv = torch.cat([parts[:, None].to(torch.uint8), (uv * 255).round().to(torch.uint8)], dim=1)
        confidence = outputs["part_logits"].float().softmax(dim=1).amax(dim=1)
        return {"key": batch["key"], "image": batch["image"], "parts": parts, "u": uv[:, 0], "v": uv[:, 1],
                "confidence": confidence, "iuv": iuv}

