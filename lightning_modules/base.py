"""The shared base of every crocoman task: backbone + head, pretrained weights, the step, optimisation.

Subclasses only say what differs (their losses, metrics and pictures, as hooks of one step
template); the optimiser recipe is CroCo's for every task: AdamW without weight decay on norms,
biases and tokens, base LR scaled by the effective global batch / 256, linear warmup then
half-cycle cosine, per step.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from lightning import LightningModule
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

from backbone.croco import CroCoNet
from backbone.weights import ARCHITECTURE_KEY, load_croco
from heads.base import Head
from lightning_modules.rng import every_rank_state, restore_rank_state
from lightning_modules.visualize import log_picture


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor per step: linear warmup from 1/warmup to 1, then a half-cycle cosine down to ``min_ratio``.

    A factor (``LambdaLR``) rather than absolute LRs keeps every group's own peak: groups with a
    layer-decay ``lr_scale`` end at ``min_ratio`` x *their* peak, not at one shared floor.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class StepOutput(NamedTuple):
    """What a task's ``forward_batch`` gives the shared step."""

    loss: Tensor
    terms: dict[str, Tensor]  # logged beside the loss: loss/<name> in training, <stage>/loss/<name> in evaluation
    outputs: Any  # what the task's metrics and pictures read


class CrocoTask(LightningModule):
    """Owns the backbone, the head, the step and the optimiser.

    Training, validation and test steps are one template (``shared_step``): the task's
    ``forward_batch`` gives the loss and its terms, which are logged (``loss``, ``loss/<term>``;
    ``val/loss``, ``val/loss/<term>`` ... synchronised over ranks), ``update_metrics`` feeds the
    stage's metrics, and on rank 0 ``pictures`` draws what ``picture_due`` says is due (by default the
    first batch of each validation, ``picture_stages``).

    Args:
        backbone: the shared network (``backbone.CroCoNet``).
        head: the task head; it is bound to the backbone here.
        pretrained: checkpoint to initialise from (CroCo release, CroCo training checkpoint, or a
            crocoman Lightning checkpoint); a report of matched / missing / unexpected keys is logged.
        lr: base learning rate for a global batch of ``lr_reference_batch``.
        lr_reference_batch: the LR actually used is ``lr * global_batch / lr_reference_batch``.
        weight_decay: AdamW weight decay (never on 1-D parameters, biases and tokens).
        betas: AdamW betas.
        warmup_steps: optimizer steps of linear warmup.
        min_lr_ratio: LR at the end of the cosine, relative to the peak.
        compile: ``torch.compile`` the backbone (GPU runs; adds start-up time).
        activation_checkpointing: recompute each transformer block's activations in the backward
            pass instead of storing them: about a third more compute for a fraction of the activation
            memory (large models, big batches). Works with every strategy; under FSDP2 the blocks are
            checkpointed and then sharded.
    """

    picture_stages: tuple[str, ...] = ("val",)

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        pretrained: str | None = None,
        lr: float = 1.5e-4,
        lr_reference_batch: int = 256,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # Objects (backbone, head, masking, body_model ...) are rebuilt from the run's config.yaml;
        # keeping only plain values in the checkpoint lets it load with torch.load(weights_only=True),
        # and keeps them out of the logged hyper-parameters, which Lightning merges with the
        # DataModule's (a `body_model` object there would clash with the data's `body_model` name).
        self.save_hyperparameters(ignore=["backbone", "head", "body_model", "masking"])
        plain = (int, float, str, bool, tuple, list, type(None))
        for name in [k for k, v in self.hparams.items() if not isinstance(v, plain)]:
            del self.hparams[name]
            del self._hparams_initial[name]
        self._resumed_rng_states: list[dict] | None = None  # set by on_load_checkpoint, used once
        self.backbone = backbone
        self.head = head
        self.head.bind(backbone)
        if pretrained:
            self.load_pretrained(pretrained)
        if compile:
            self.backbone.compile()

    def configure_model(self) -> None:
        """Checkpoint activations per block if asked; under ``ModelParallelStrategy`` (FSDP2) shard
        each transformer block, then the rest.

        One block per FSDP unit keeps only one block's full parameters in memory at a time. Lightning
        calls this hook once per stage (fit, then test ...), hence the flag.
        """
        if getattr(self, "_model_configured", False):
            return
        self._model_configured = True
        if self.hparams.activation_checkpointing:
            for block in self.backbone.transformer_blocks():
                checkpoint(block)
        if self.device_mesh is None:
            return
        # The whole (nodes x devices) mesh: with two dimensions fully_shard replicates over the first and shards
        # over the second (HSDP), so parameters are sharded across a node's devices and gradients are averaged
        # over every rank. Lightning's "auto" sizes make "data_parallel" the nodes alone: sharding over it left
        # one node's devices training unsharded, unsynchronised copies.
        mesh = self.device_mesh
        for block in self.backbone.transformer_blocks():
            fully_shard(block, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Remember the W&B run and every rank's random generators, so that resuming this checkpoint
        continues the same run (``lightning_modules.rng``), and the backbone's sizes, so that a config
        fine-tuning from it can leave them out (``crocoman.cli``)."""
        if isinstance(self.backbone, CroCoNet):
            checkpoint[ARCHITECTURE_KEY] = self.backbone.architecture
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint["wandb_run_id"] = logger.version
        checkpoint["rng_states"] = every_rank_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_rng_states = checkpoint.get("rng_states")

    def forward_batch(self, batch: dict, batch_idx: int, stage: str) -> StepOutput:
        """The batch's loss, the terms logged beside it and the outputs metrics and pictures read;
        ``stage`` is ``train``, ``val`` or ``test``."""
        raise NotImplementedError(f"{type(self).__name__} has no forward_batch: tasks implement it")

    def batch_size(self, batch: dict) -> int:
        """Samples in ``batch``, for logged means."""
        return len(batch["image"])

    def update_metrics(self, batch: dict, outputs: Any, stage: str) -> None:
        """Feed (and log) ``stage``'s metrics with a batch's ``outputs``; training batches come here too."""

    def picture_due(self, stage: str, batch_idx: int) -> bool:
        """Whether this batch is drawn: the first of each evaluation of ``picture_stages`` (not the sanity check)."""
        return stage in self.picture_stages and batch_idx == 0 and not self.trainer.sanity_checking

    def pictures(self, batch: dict, outputs: Any, stage: str) -> dict[str, Tensor]:
        """(3, H, W) pictures of a batch in [0, 1] by logging key (``val/meshes`` ...); drawn only when due."""
        return {}

    def shared_step(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        """The loss and its terms logged, the metrics fed, the pictures that are due drawn on rank 0."""
        step = self.forward_batch(batch, batch_idx, stage)
        size, evaluating = self.batch_size(batch), stage != "train"
        prefix = f"{stage}/" if evaluating else ""
        self.log(f"{prefix}loss", step.loss, prog_bar=True, sync_dist=evaluating, batch_size=size)
        self.log_dict({f"{prefix}loss/{name}": term for name, term in step.terms.items()}, sync_dist=evaluating,
                      batch_size=size)
        self.update_metrics(batch, step.outputs, stage)
        if self.trainer.is_global_zero and self.picture_due(stage, batch_idx):
            for key, picture in self.pictures(batch, step.outputs, stage).items():
                log_picture(self.trainer, key, picture)
        return step.loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "test")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Right before the first step after a resume: nothing that ran since the restore shifts the draws.
        states, self._resumed_rng_states = self._resumed_rng_states, None
        if states is not None:
            restore_rank_state(states, self.global_rank)

    def eval_generator(self, batch_idx: int, device: torch.device) -> torch.Generator:
        """A generator of its own for an evaluation batch: the same masks at every validation (losses
        compare across epochs), and no draw from the training generators."""
        return torch.Generator(device).manual_seed(1_000_003 * self.global_rank + batch_idx)

    def load_pretrained(self, path: str) -> None:
        report = load_croco(path, self.backbone, self.head)
        rank_zero_info(f"Loaded pretrained weights from {path}: {report}")

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by norm under FSDP (``fsdp.yaml``) as well: each rank holds flat shards of the gradients, so only
        the wrapped root can take their global norm, and Lightning's FSDP precision plugin, which has no handle on
        it, refuses norm clipping at the first step."""
        if (isinstance(self.trainer.model, FullyShardedDataParallel) and gradient_clip_val
                and gradient_clip_algorithm in (None, "norm")):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def global_batch_size(self) -> int:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "batch_size"):
            raise RuntimeError("LR scaling needs the per-device batch size: use a crocoman DataModule "
                               "(it has `batch_size`) or set lr_reference_batch to your global batch")
        return datamodule.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups; the hook subclasses override to group differently (layer-wise LR decay)."""
        no_decay = [f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()]
        return param_groups_weight_decay(self, self.hparams.weight_decay, no_weight_decay_list=no_decay)

    def configure_optimizers(self) -> dict:
        lr = self.hparams.lr * self.global_batch_size() / self.hparams.lr_reference_batch
        # A group's ``lr_scale`` (layer-wise LR decay) scales its own peak.
        groups = [{**group, "lr": lr * group.get("lr_scale", 1.0)} for group in self.param_groups()]
        # Fused AdamW unscales gradients inside its step, so Lightning refuses it with gradient
        # clipping under mixed precision (measured on an H200); the multi-tensor path serves then.
        fused = self.device.type == "cuda" and not self.trainer.gradient_clip_val
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=self.hparams.betas, fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(0, min(self.hparams.warmup_steps, total - 1))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(warmup, total, self.hparams.min_lr_ratio))
        rank_zero_info(f"AdamW: peak lr {lr:.3g} (base {self.hparams.lr:g} x global batch "
                       f"{self.global_batch_size()} / {self.hparams.lr_reference_batch}), "
                       f"{warmup} warmup steps, cosine over {total} steps")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
