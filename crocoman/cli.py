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
from crocoman.class_paths import names_subclass
from lightning_modules.loggers import WandbLogger


class CrocomanCLI(LightningCLI):
    """Resuming with ``--ckpt_path`` also continues the checkpoint's W&B run (same run id); a run without a
    logger drops the configs' learning-rate monitor instead of stopping at its first training step; the backbone
    sizes a config leaves out are those of its pretrained checkpoint (``crocoman.backbone_sizes``); a logger's
    ``save_dir`` and a checkpoint callback's ``dirpath`` left null are the run's folder, ``default_root_dir``."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        command = sys.argv[1:] if args is None else args
        sizes = [] if isinstance(command, (dict, Namespace)) else sizes_from_pretrained(parser, list(command))
        if sizes:  # as LightningCLI parses, without its warning about arguments given beside a command line
            self.config = parser.parse_args([*command, *sizes])
        else:
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        self._place_run_files()

    def _place_run_files(self) -> None:
        """One setting moves a whole run: ``--trainer.default_root_dir=runs/x`` also moves its W&B files and
        checkpoints unless the config names their folders (with the folders spelled out in every config, the
        override left them writing into the config's own run folder, on top of another run's checkpoints)."""
        trainer = self._get(self.config, "trainer")
        root = trainer.get("default_root_dir")
        if root is None:
            return
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
                init_args.save_dir = root
        for callback in trainer.get("callbacks") or []:
            init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
            if init_args is not None and init_args.get("dirpath") is None \
                    and names_subclass(callback.class_path, ModelCheckpoint):
                init_args.dirpath = str(Path(root, "checkpoints"))

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
