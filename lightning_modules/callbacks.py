"""Callbacks: what a run tells the person at the terminal, and how it guards itself."""

import logging
import os
import shutil
from pathlib import Path
from typing import Literal
from weakref import proxy

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import callbacks
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from datamodules.health import SKIP_KINDS
from lightning_modules.visualize import picture_dir

log = logging.getLogger(__name__)

PARTIAL, PARKED = ".partial", ".old"  # suffixes after .ckpt: Lightning's search for last checkpoints skips them


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


def _remove(path: Path) -> None:
    """Removes a checkpoint, file or folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _swap_into_place(partial: Path, target: Path) -> None:
    """Puts a finished save at its name so that a kill at any point leaves a whole checkpoint: a file by one atomic
    rename; a folder (FSDP2's distributed checkpoint) by two, the previous one parked as ``<name>.old`` in between
    (a kill there leaves only that, which ``ModelCheckpoint._find_last_checkpoints`` then finds)."""
    parked = target.with_name(target.name + PARKED)
    if target.is_dir() or (partial.is_dir() and target.exists()):
        _remove(parked)  # an earlier swap's leftover: the target is whole
        os.replace(target, parked)
    os.replace(partial, target)
    _remove(parked)


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's, except that ``last.ckpt`` follows every save point, not only those where the
    monitored metric made the top k, and that a save killed half-way leaves the previous checkpoint whole.

    Lightning 2.6 writes ``last.ckpt`` only together with a top-k checkpoint, so a run whose last
    validations did not improve kept an older one: a 1500-step fine-tuning left it at step 1250,
    the final weights were lost and ``--ckpt_path last`` resumed 250 steps back.

    Lightning stages a file in ``TMPDIR`` and moves it, which across filesystems (node-local ``/tmp`` on a
    cluster) copies into the target in place, and it writes a distributed checkpoint's shards into the existing
    folder: a kill during either left a checkpoint ``--ckpt_path last`` could not read. So every save goes to
    ``<name>.partial`` beside its target and rank 0 swaps it into place once Lightning's save has returned on
    every rank (it ends in a barrier): no collective is added, so ranks cannot wait on each other here.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning 2.6 writes last.ckpt here even in a fast_dev_run, which its docs say saves no checkpoint:
        # a smoke test of a ViT-L config wrote 4 GB (weights and AdamW state) and spent 14 s of its 35 s doing so.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if not _is_local_file_protocol(filepath):  # object stores: an upload is all or nothing already
            return super()._save_checkpoint(trainer, filepath)
        partial = Path(filepath + PARTIAL)
        if trainer.is_global_zero:
            # Left by a save killed half-way. Only rank 0 writes a file; sharded saves first broadcast the path,
            # so no rank writes into the folder before it is gone.
            _remove(partial)
        trainer.save_checkpoint(str(partial), self.save_weights_only)
        if trainer.is_global_zero:
            _swap_into_place(partial, Path(filepath))
        # The rest of Lightning's _save_checkpoint, once the checkpoint is at its name (loggers may upload it).
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """Lightning's search, plus a ``last*.ckpt.old`` whose ``last*.ckpt`` is missing: the whole previous
        checkpoint of a folder swap killed between its two renames."""
        found = super()._find_last_checkpoints(trainer)
        folder = self._ModelCheckpoint__resolve_ckpt_dir(trainer)  # where Lightning's search looked
        if not self._fs.exists(folder):
            return found
        parked = {os.path.normpath(path) for path in self._fs.ls(folder, detail=False)
                  if Path(path).name.startswith(self.CHECKPOINT_NAME_LAST)  # as Lightning matches ^last(-\d+)?
                  and path.endswith(self.FILE_EXTENSION + PARKED)}
        return found | {path for path in parked if path.removesuffix(PARKED) not in found}

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
