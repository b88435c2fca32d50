"""Hand-gesture classification: encoder tokens of a hand crop -> ``heads.ClassificationHead``."""

from collections.abc import Sequence

from lightning import LightningDataModule
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.transforms.v2.functional import pil_to_tensor

from lightning_modules.base import StepOutput
from lightning_modules.finetune import FinetuneTask
from lightning_modules.visualize import log_picture


def classification_metrics(num_classes: int) -> MetricCollection:
    """Top-1 accuracy, and balanced accuracy (mean per-class recall), which a majority class cannot inflate."""
    return MetricCollection({"top1": MulticlassAccuracy(num_classes, average="micro"),
                             "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro")})


def confusion_picture(confusion: Tensor, class_names: Sequence[str], cell_px: int = 28) -> Tensor:
    """A confusion matrix as a (3, H, W) picture in [0, 1]: rows are true classes, columns predictions.

    Cells are shaded by their share of the row (the per-class recall sits on the diagonal) and
    show the count; rows are labelled with index and name, columns with the index.
    """
    counts = confusion.long().cpu()
    shares = counts.float() / counts.sum(dim=1, keepdim=True).clamp_min(1)
    font = ImageFont.load_default(size=cell_px // 2)
    labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    corner = "true \\ pred"
    margin = int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font) for t in [corner, *labels])) + 8
    n = len(class_names)
    picture = Image.new("RGB", (margin + n * cell_px, cell_px + n * cell_px), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((4, cell_px // 4), corner, fill="grey", font=font)
    for i in range(n):
        draw.text((4, cell_px * (i + 1) + cell_px // 4), labels[i], fill="black", font=font)
        draw.text((margin + cell_px * i + cell_px // 3, cell_px // 4), str(i), fill="black", font=font)
        for j in range(n):
            share = shares[i, j].item()
            colour = tuple(int(255 - share * drop) for drop in (215, 160, 75))
            x, y = margin + cell_px * j, cell_px * (i + 1)
            draw.rectangle((x, y, x + cell_px - 1, y + cell_px - 1), fill=colour, outline=(200, 200, 200))
            draw.text((x + 3, y + cell_px // 4), str(counts[i, j].item()), font=font,
                      fill="white" if share > 0.5 else "black")
    return pil_to_tensor(picture).float() / 255


class GestureModule(FinetuneTask):
    """Classify the gesture shown in a hand crop.

    Batches carry ``image`` (B, 3, H, W) in [0, 1], ``label`` (B,) class ids and ``key``. Logged:
    ``loss``, ``train/top1`` and ``train/balanced_accuracy`` of each batch; ``val/loss``,
    ``val/top1`` and ``val/balanced_accuracy`` per epoch (likewise ``test/``), and the confusion
    matrix as a picture (``val/confusion``) every validation epoch.

    Args:
        class_names: class names in label order. Unset: taken at setup from the DataModule's
            ``classes`` (manifest.json next to the shards) and then stored in the checkpoint's
            hyper-parameters, so a saved model knows its labels. Set: must match the data's. (Not
            called ``classes``: Lightning refuses a hyper-parameter that the DataModule also has
            with another value, and a resumed run restores this one from the checkpoint.)
        label_smoothing: cross-entropy label smoothing (0.1 is the usual fine-tuning choice).
        **kwargs: ``freeze_encoder``, ``layer_decay`` of ``FinetuneTask``; backbone, head
            (``heads.ClassificationHead``), ``pretrained`` and optimiser arguments of ``CrocoTask``.
    """

    def __init__(self, *args, class_names: list[str] | None = None, label_smoothing: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if class_names is not None:
            self.head.set_num_classes(len(class_names))

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def configure_from_data(self, datamodule: LightningDataModule | None) -> None:
        data_classes = getattr(datamodule, "classes", None)
        names = self.hparams.class_names
        if names is None and data_classes is None:
            raise ValueError("the gesture classes are unknown: put manifest.json with a 'classes' list next to the "
                             "shards, or set --data.init_args.classes (or the model's class_names)")
        if names is not None and data_classes is not None and list(names) != list(data_classes):
            raise ValueError(f"the model's class_names {list(names)} differ from the data's classes "
                             f"{list(data_classes)}")
        self.hparams.class_names = list(names if names is not None else data_classes)
        self.head.set_num_classes(len(self.hparams.class_names))

    def configure_metrics(self) -> None:
        num_classes = len(self.hparams.class_names)
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, num_classes) logits."""
        tokens, _ = self.backbone.encode(images)
        return self.head(tokens)

    def forward_batch(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> StepOutput:
        logits = self(batch["image"])
        return StepOutput(self.criterion(logits, batch["label"]), {}, logits)

    def update_metrics(self, batch: dict[str, Tensor], logits: Tensor, stage: str) -> None:
        """Training logs each batch's scores (the metrics' forward); evaluation the epoch's, and its confusion."""
        labels = batch["label"]
        metrics = getattr(self, f"{stage}_metrics")
        if stage == "train":
            metrics(logits, labels)
        else:
            metrics.update(logits, labels)
            getattr(self, f"{stage}_confusion").update(logits, labels)
        self.log_dict(metrics, batch_size=len(labels))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict:
        """Class probabilities and the predicted class name per sample."""
        probabilities = self(batch["image"]).softmax(dim=-1)
        return {"key": batch["key"], "probabilities": probabilities,
                "predicted": [self.hparams.class_names[i] for i in probabilities.argmax(dim=-1).tolist()]}

    def _log_confusion(self, stage: str) -> None:
        """Computed on every rank (torchmetrics all-reduces it), drawn once."""
        metric = getattr(self, f"{stage}_confusion")
        confusion = metric.compute()
        metric.reset()
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_picture(self.trainer, f"{stage}/confusion", confusion_picture(confusion, self.hparams.class_names))

    def on_validation_epoch_end(self) -> None:
        self._log_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test")
