"""Callbacks: what a run tells the person at the terminal, and how it guards itself."""

import logging
from pathlib import Path
from typing import Literal

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch import callbacks
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from datamodules.health import SKIP_KINDS
from lightning_modules.visualize import picture_dir

log = logging.getLogger(__name__)


class RunSummary(Callback):
    """Records the monitored metric and prints where everything went at the end.

    A training metric is read after the first step and then every ``trainer.log_every_n_steps``
    steps, so the training loop gets no extra per-step host-device synchronisation; a validation
    metric (``val/...``) at the end of each validation, the last one included.
    """

    def __init__(self, monitor: str = "loss") -> None:
        self.monitor = monitor
        self.history: list[tuple[int, float]] = []

    def _record(self, trainer: Trainer) -> None:
        if self.monitor in trainer.callback_metrics:
            self.history.append((trainer.global_step, trainer.callback_metrics[self.monitor].item()))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.monitor.startswith("val/") and (step == 1 or step % trainer.log_every_n_steps == 0):
            self._record(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor.startswith("val/") and not trainer.sanity_checking:
            self._record(trainer)

    def summary(self, trainer: Trainer) -> list[str]:
        lines = [f"crocoman: finished {trainer.global_step} steps"]
        if len(self.history) >= 2:
            tail = [v for _, v in self.history[-max(1, len(self.history) // 10):]]
            start, end = self.history[0][1], sum(tail) / len(tail)
            lines.append(f"  {self.monitor}: {start:.4f} at step {self.history[0][0]} -> {end:.4f} "
                         f"(mean of the last {len(tail)} logged), {100 * (1 - end / start):.0f}% lower")
        for callback in trainer.callbacks:
            if isinstance(callback, callbacks.ModelCheckpoint) and callback.dirpath:
                last = Path(callback.dirpath, "last.ckpt")
                lines.append(f"  checkpoints: {callback.dirpath}" + (f" (last: {last})" if last.exists() else ""))
                if callback.best_model_path and callback.best_model_score is not None:  # no monitor: no best
                    lines.append(f"  best ({callback.monitor}={callback.best_model_score:.4f}): "
                                 f"{callback.best_model_path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                mode = "offline" if logger._offline else "online"
                lines.append(f"  W&B run ({mode}): {Path(logger.experiment.dir).parent}")
        for callback in trainer.callbacks:  # e.g. OnlineProbes: scores beside their step-0 floor
            lines.extend(getattr(callback, "summary_lines", list)())
        pictures = picture_dir(trainer)
        if pictures.exists():
            lines.append(f"  pictures: {pictures} ({len(list(pictures.glob('*.png')))} PNG)")
        return lines

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        print("\n".join(self.summary(trainer)), flush=True)


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's, except that ``last.ckpt`` follows every save point, not only those where the
    monitored metric made the top k.

    Lightning 2.6 writes ``last.ckpt`` only together with a top-k checkpoint, so a run whose last
    validations did not improve kept an older one: a 1500-step fine-tuning left it at step 1250,
    the final weights were lost and ``--ckpt_path last`` resumed 250 steps back.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: Trainer) -> None:
        # Skipped exactly when something was saved at this step (Lightning then saved last too).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class SkippedSamples(Callback):
    """Logs ``data/skipped/<kind>`` (summed over ranks) at the end of every train and val epoch.

    The counts come from the DataModule's ``skipped`` tally; nothing is synchronised per step.
    """

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None)
        if skipped is None:
            return
        for kind, count in zip(SKIP_KINDS, skipped.float()):
            pl_module.log(f"data/skipped/{kind}", count, reduce_fx="sum", sync_dist=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module)


class NonFiniteGuard(Callback):
    """What to do when training diverges to NaN/Inf.

    ``action="stop"`` (default) checks the logged loss at logging steps only, so it adds no per-step
    synchronisation, and stops with a message saying what usually helps. ``action="skip"`` checks
    the gradients after every backward (one host-device sync per step) and drops the update when
    any is non-finite; gradients are already all-reduced under DDP, so every rank skips together.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", monitor: str = "loss") -> None:
        self.action = action
        self.monitor = monitor
        self.skipped_steps = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.action != "stop" or trainer.global_step % trainer.log_every_n_steps:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not torch.isfinite(value):
            raise RuntimeError(
                f"{self.monitor} became {value.item()} at step {trainer.global_step}. Usual fixes: a lower lr or more "
                f"warmup_steps, gradient_clip_val, bf16-mixed instead of 16-mixed; or run with "
                f"NonFiniteGuard(action='skip') to drop such steps. Resume with --ckpt_path last.")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.action != "skip":
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.stack(torch._foreach_norm(grads)).isfinite().all():
            for group in optimizer.param_groups:  # AdamW leaves parameters without a gradient untouched
                for p in group["params"]:
                    p.grad = None
            self.skipped_steps += 1
            log.warning("non-finite gradients at step %d: update skipped (%d so far)", trainer.global_step,
                        self.skipped_steps)
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
