"""The LightningCLI behind ``crocoman``, plus what resuming needs beyond Lightning's own restore."""

import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from crocoman.backbone_sizes import sizes_from_pretrained
from lightning_modules.loggers import WandbLogger


class CrocomanCLI(LightningCLI):
    """Resuming with ``--ckpt_path`` also continues the checkpoint's W&B run (same run id); a run without a
    logger drops the configs' learning-rate monitor instead of stopping at its first training step; the backbone
    sizes a config leaves out are those of its pretrained checkpoint (``crocoman.backbone_sizes``)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        command = sys.argv[1:] if args is None else args
        sizes = [] if isinstance(command, (dict, Namespace)) else sizes_from_pretrained(parser, list(command))
        if sizes:  # as LightningCLI parses, without its warning about arguments given beside a command line
            self.config = parser.parse_args([*command, *sizes])
        else:
            super().parse_arguments(parser, args)

    def before_fit(self) -> None:
        self._drop_lr_monitor_without_logger()
        checkpoint = self._resumed_checkpoint()
        if checkpoint is None:
            return
        run_id = checkpoint_metadata(checkpoint).get("wandb_run_id")
        for logger in self.trainer.loggers:
            if run_id and isinstance(logger, WandbLogger):
                logger.continue_run(run_id)
                rank_zero_info(f"W&B: continuing run {run_id} of {checkpoint}")

    def _drop_lr_monitor_without_logger(self) -> None:
        """``--trainer.logger=false`` leaves the LR nowhere to go, and Lightning's LearningRateMonitor would
        raise only at the first training step, after model set-up, compilation and sanity validation."""
        monitors = [callback for callback in self.trainer.callbacks if isinstance(callback, LearningRateMonitor)]
        if self.trainer.loggers or not monitors:
            return
        for monitor in monitors:
            self.trainer.callbacks.remove(monitor)
        rank_zero_warn("the run has no logger, so the config's LearningRateMonitor is left out")

    def _resumed_checkpoint(self) -> Path | None:
        """The checkpoint fit will resume from (``last`` resolved as Lightning does, by the callbacks' own search:
        ours also finds a checkpoint parked by a killed folder swap), if any: a file, or a folder for distributed
        checkpoints."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path == "last":
            candidates = [Path(path) for callback in self.trainer.checkpoint_callbacks
                          if isinstance(callback, ModelCheckpoint) and callback.dirpath
                          for path in callback._find_last_checkpoints(self.trainer)]
            existing = [path for path in candidates if path.exists()]
            return max(existing, key=lambda path: path.stat().st_mtime) if existing else None
        return Path(ckpt_path) if ckpt_path and Path(ckpt_path).exists() else None


def checkpoint_metadata(path: Path) -> dict:
    """A checkpoint's entries besides the model and optimiser tensors: the file itself, or the metadata
    file inside a distributed checkpoint (a folder: FSDP2 with ``save_distributed_checkpoint``)."""
    return torch.load(path / _METADATA_FILENAME if path.is_dir() else path, map_location="cpu", weights_only=True,
                      mmap=True)
