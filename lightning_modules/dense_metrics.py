"""DensePose metrics as torchmetrics: part segmentation, UV error and a GPS-style AP.

Every metric keeps sums and counts as states with ``dist_reduce_fx="sum"``, so values are exact
over all pixels / images seen by all ranks, whatever the batch split. Inputs are the decoded
prediction (``dense_prediction``) and the target ``iuv`` (B, 3, H, W) uint8 as the shards hold
it: part id (0 background, 1..24; 255 = ``datamodules.labelled.UNLABELLED``, as are ids above 24, is ignored
everywhere), U and V scaled 0..255 (meaningful on parts 1..24 only).

What is and isn't the official DensePose-COCO protocol. Official (Güler et al. 2018; the COCO
DensePose evaluation): per-person *instances* from a detector, matched to ground-truth people;
at each annotated point the error is the *geodesic distance on the SMPL surface* between the
predicted and true surface points; the per-person GPS uses a normaliser kappa (0.255 in the
original, later per-part kappas in GPSm/"dp" evaluation), and AP is the area under the
precision/recall curve over detection scores, averaged over GPS thresholds 0.5:0.05:0.95. Ours
scores person *crops* (one person per crop, one prediction per crop, no detection, no matching),
and replaces the geodesic distance by the Euclidean distance between predicted and true (U, V)
within the correct part, in units of one part chart (UV spans [0, 1] per part), with a wrong
part scoring 0. kappa is set so that an error of half a part scores 0.5, the rule by which the
official kappa was chosen ("the average half-size of a body part"). With one prediction per
person, precision equals recall equals the share of crops whose GPS passes the threshold, and
that share is our AP_t. The numbers track progress on our data; they are not comparable with
published DensePose-COCO APs.
"""

import math

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from heads.dense import NUM_PARTS

GPS_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))
HALF_PART_KAPPA = 0.5 / math.sqrt(2 * math.log(2))  # exp(-0.5**2 / (2 kappa**2)) = 0.5


def dense_prediction(part_logits: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Head outputs -> (B, H, W) predicted part ids and (B, 2, H, W) the U, V of that part (0 on background)."""
    parts = part_logits.argmax(dim=1)
    channel = (parts - 1).clamp_min(0)[:, None]
    uv = torch.cat([u.gather(1, channel), v.gather(1, channel)], dim=1).float()
    return parts, uv * (parts > 0)[:, None]


def target_maps(iuv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3, H, W) uint8 shard layout -> (B, H, W) part ids (unlabelled pixels: 0), (B, 2, H, W) U, V in [0, 1]
    and the (B, H, W) mask of labelled pixels (ids 0..24; 255 and any other id are treated as unlabelled)."""
    parts = iuv[:, 0].long()
    labelled = parts <= NUM_PARTS
    return parts * labelled, iuv[:, 1:].float() / 255, labelled


class PartSegmentation(Metric):
    """Part mIoU over the 25 classes (background included), foreground mIoU over the 24 parts, pixel accuracy.

    A class that is neither in the labels nor in the predictions (union 0) is left out of the mean
    rather than counted as 0 or 1. Pixels labelled 255 are ignored.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        classes = 1 + NUM_PARTS
        self.add_state("confusion", default=torch.zeros(classes, classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, parts: Tensor, uv: Tensor, iuv: Tensor) -> None:
        target, _, labelled = target_maps(iuv)
        classes = 1 + NUM_PARTS
        pairs = target[labelled] * classes + parts[labelled]
        self.confusion += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)

    def compute(self) -> dict[str, Tensor]:
        confusion = self.confusion.double()
        hits = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - hits
        iou = hits / union.clamp_min(1)
        present = union > 0
        return {"miou": iou[present].mean().float(), "miou_fg": iou[1:][present[1:]].mean().float(),
                "pixel_acc": (hits.sum() / confusion.sum().clamp_min(1)).float()}


class UVError(Metric):
    """Mean Euclidean (U, V) error, in chart units, over labelled foreground pixels whose part is right.

    Only where the part is right: elsewhere the UV of another chart means nothing (part errors are
    what the segmentation metrics count).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, parts: Tensor, uv: Tensor, iuv: Tensor) -> None:
        target_parts, target_uv, _ = target_maps(iuv)
        right = (parts == target_parts) & (target_parts > 0)
        self.total += (uv - target_uv).norm(dim=1)[right].double().sum()
        self.count += right.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()  # NaN until a pixel is scored: 0 would read as perfect


def point_similarity(parts: Tensor, uv: Tensor, iuv: Tensor, kappa: float = HALF_PART_KAPPA) -> tuple[Tensor, Tensor]:
    """Per image: GPS, the mean of exp(-d^2 / (2 kappa^2)) over labelled foreground points (d = UV distance
    within the right part, in chart units; a wrong part scores 0), and whether the image has any such point."""
    target_parts, target_uv, _ = target_maps(iuv)
    points = target_parts > 0
    squared = (uv - target_uv).pow(2).sum(dim=1)
    similarity = torch.exp(-squared / (2 * kappa**2)) * (parts == target_parts)
    count = points.flatten(1).sum(1)
    gps = (similarity * points).flatten(1).sum(1) / count.clamp_min(1)
    return gps, count > 0


class GPSAveragePrecision(Metric):
    """The share of crops whose GPS reaches each threshold 0.5:0.05:0.95, and its mean (see the module docstring
    for how this relates to DensePose-COCO's AP). Crops without a labelled foreground point are not scored.

    Args:
        kappa: the GPS normaliser, in part-chart units (default: half a part scores 0.5).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, kappa: float = HALF_PART_KAPPA, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kappa = kappa
        self.register_buffer("thresholds", torch.tensor(GPS_THRESHOLDS, dtype=torch.float64), persistent=False)
        self.add_state("passed", default=torch.zeros(len(GPS_THRESHOLDS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, parts: Tensor, uv: Tensor, iuv: Tensor) -> None:
        gps, scored = point_similarity(parts, uv, iuv, self.kappa)
        self.passed += (gps[scored].double()[:, None] >= self.thresholds).sum(0)
        self.images += scored.sum()

    def compute(self) -> dict[str, Tensor]:
        precision = self.passed.double() / self.images  # NaN until a crop is scored
        return {"gps_ap": precision.mean().float(), "gps_ap50": precision[0].float(),
                "gps_ap75": precision[5].float()}  # thresholds[5] = 0.75


def densepose_metrics(kappa: float = HALF_PART_KAPPA) -> MetricCollection:
    """All DensePose metrics over one ``update(parts, uv, iuv)``; ``compute()`` gives miou, miou_fg,
    pixel_acc, uv_error, gps_ap, gps_ap50 and gps_ap75."""
    return MetricCollection({"segmentation": PartSegmentation(), "uv_error": UVError(),
                             "gps": GPSAveragePrecision(kappa)})
