"""The shared base of the fine-tuning tasks (mesh recovery, DensePose, gesture).

What every downstream task does the same way lives here once: the pretrained *encoder* is
loaded (the completion decoder is not used downstream), the decoder is frozen out of training,
the encoder is optionally frozen for probing, and the encoder's layers get CroCo/BEiT-style
layer-wise LR decay. Subclasses fill the named hooks (``configure_losses``,
``configure_from_data``, ``configure_metrics``) and write their steps.
"""

import math
from collections.abc import Callable
from pathlib import Path

from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

from backbone.weights import ENCODER_ARCHITECTURE, ENCODER_KEYS, load_encoder, recorded_architecture
from lightning_modules.base import CrocoTask


class FinetuneTask(CrocoTask):
    """Backbone encoder + task head, initialised from a pretrained encoder.

    Only encoder parameters and the head train; the decoder's parameters get
    ``requires_grad=False``, which keeps them out of the optimiser and out of DDP's gradient
    reduction (a trainable parameter that never receives a gradient is an error under DDP).

    Hooks, in the order they are called:
        ``configure_losses()`` at construction;
        ``configure_from_data(datamodule)`` at setup, for what the data decides (e.g. the class list);
        ``configure_metrics()`` at setup, after it, since metric sizes can come from the data.

    Args:
        freeze_encoder: probing: the encoder is frozen, kept in eval mode (no dropout or drop-path)
            and gets no optimiser group; only the head trains.
        layer_decay: layer-wise LR decay: the encoder is split into layers by the backbone's
            ``group_matcher`` (CroCoNet: patch embedding, then one per block, the final norm with the
            last block); layer ``i`` of ``0 .. L`` trains at ``lr * layer_decay ** (L + 1 - i)``, the
            head at ``lr``. None: one LR for all.
        **kwargs: backbone, head, ``pretrained`` (a file holding encoder weights: our pretraining or
            fine-tuning checkpoint, a CroCo release; decoder and head keys in it are ignored) and
            the optimiser arguments of ``CrocoTask``.
    """

    def __init__(self, *args, freeze_encoder: bool = False, layer_decay: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad_(f"backbone.{name}".startswith(ENCODER_KEYS) and not freeze_encoder)
        self.train(self.training)  # Lightning keeps the modes a module comes with: a frozen encoder starts in eval
        self.configure_losses()

    def configure_losses(self) -> None:
        """Create the loss modules (hyper-parameters are in ``self.hparams``)."""

    def configure_from_data(self, datamodule: LightningDataModule | None) -> None:
        """Adopt what the data decides (class names, joint counts) before the metrics are built."""

    def configure_metrics(self) -> None:
        """Create the torchmetrics objects; they are synchronised across ranks by torchmetrics itself."""

    def setup(self, stage: str) -> None:
        self.configure_from_data(self.trainer.datamodule)
        self.configure_metrics()

    def load_pretrained(self, path: str) -> None:
        """The encoder's weights, all of them: a partly loaded encoder would fine-tune from noise unnoticed."""
        if not Path(path).exists():  # a file, or an FSDP2 distributed checkpoint folder
            raise FileNotFoundError(
                f"pretrained checkpoint not found: {path} (from {Path.cwd()}). Pretrain one first (`make pretrain` "
                f"writes runs/pretrain_cpu_demo/checkpoints/last.ckpt), give a CroCo release, or pass "
                f"--model.init_args.pretrained=null to train from scratch")
        self._check_architecture(path)
        report = load_encoder(path, self.backbone)
        if report.missing or report.unexpected or report.shape_mismatched:
            raise RuntimeError(f"the pretrained encoder does not fit the backbone: {report} Build the backbone with "
                               f"the sizes it was pretrained with (embed_dim, depth, num_heads, patch_size)")
        rank_zero_info(f"Loaded the pretrained encoder from {path}: {report}")

    def _check_architecture(self, path: str) -> None:
        """The encoder sizes the checkpoint records (if it does) must be the backbone's: a different head count,
        for one, changes no weight shape and would load without a complaint from the key report."""
        recorded = recorded_architecture(path) or {}
        ours = getattr(self.backbone, "architecture", {})
        differ = [f"{key}={ours[key]!r} here, {recorded[key]!r} in the checkpoint" for key in ENCODER_ARCHITECTURE
                  if key in recorded and key in ours and recorded[key] != ours[key]]
        if differ:
            raise RuntimeError(f"the pretrained encoder does not fit the backbone: {'; '.join(differ)} ({path}). "
                               f"Leave these sizes out of the config to take the checkpoint's")

    def train(self, mode: bool = True) -> "FinetuneTask":
        """A frozen encoder stays in eval mode (no dropout or drop-path), whoever switches the module to training."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.backbone.eval()
        return self

    def group_matcher(self, coarse: bool = False) -> Callable[[str], float]:
        """Layer id of each parameter for timm's ``param_groups_layer_decay``.

        Encoder parameters get the backbone's own layer ids; everything else (the head; the decoder,
        which is frozen and so never grouped) maps past the last encoder layer: the full LR.
        """
        layer_of = group_parameters(self.backbone, self.backbone.group_matcher(coarse), reverse=True)
        encoder = {f"backbone.{name}": layer for name, layer in layer_of.items()
                   if f"backbone.{name}".startswith(ENCODER_KEYS)}
        return lambda name: encoder.get(name, math.inf)

    def param_groups(self) -> list[dict]:
        """With ``layer_decay``, timm's layer-wise groups; CrocoTask gives each ``lr_scale`` x the peak LR."""
        if self.hparams.layer_decay is None:
            return super().param_groups()
        no_decay = [f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()]
        groups = param_groups_layer_decay(self, self.hparams.weight_decay, no_weight_decay_list=no_decay,
                                          layer_decay=self.hparams.layer_decay)
        scales = sorted({group["lr_scale"] for group in groups})
        rank_zero_info(f"layer-wise LR decay {self.hparams.layer_decay}: {len(scales)} LR levels from "
                       f"{scales[0]:.3g} to {scales[-1]:.3g} x the peak LR")
        return groups

    def on_fit_start(self) -> None:
        if not self.hparams.pretrained:
            rank_zero_warn("fine-tuning without a pretrained encoder (pretrained=null): the encoder starts random")
