"""Callbacks that tests add through the CLI (``--trainer.callbacks+=tests.recorders.BatchRecorder``)."""

import json
import os
import signal
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torch._dynamo.utils import counters
from torch.distributed._composable.contract import _get_registry
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor
from torch.nn import Module


def block_layout(block: Module) -> tuple[bool, bool]:
    """Whether a transformer block ended up sharded and activation-checkpointed: under FSDP2 its parameters are
    DTensors of which this rank holds part, with composable checkpointing on it; under FSDP (``fsdp.yaml``) it
    is a unit of its own whose flat parameter this rank holds part of, with a checkpoint wrapper inside."""
    if isinstance(block, FullyShardedDataParallel):
        flat = block._flat_param
        checkpointed = any(isinstance(module, CheckpointWrapper) for module in block.modules())
        return flat.numel() < flat._unpadded_unsharded_size.numel(), checkpointed
    sharded = all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in block.parameters())
    return sharded, "checkpoint" in (_get_registry(block) or {})


class BatchRecorder(Callback):
    """Writes, per rank, the training batches per epoch, the keys seen in validation, whether the
    transformer blocks ended up sharded and checkpointed (``block_layout``), how many
    graphs torch.compile built in that process, and how far training moved the parameters (L1).

    The output folder comes from ``CROCOMAN_RECORD_DIR`` so the callback needs no arguments.
    """

    def __init__(self) -> None:
        self.train_batches: dict[int, int] = {}
        self.val_keys: list[str] = []
        self.initial: list[Tensor] = []

    @staticmethod
    def full_parameters(module: LightningModule) -> list[Tensor]:
        return [(p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for p in module.parameters()]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = self.full_parameters(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.train_batches[trainer.current_epoch] = self.train_batches.get(trainer.current_epoch, 0) + 1

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.val_keys.extend(batch["key"])

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        out = Path(os.environ["CROCOMAN_RECORD_DIR"], f"rank{trainer.global_rank}.json")
        layouts = [block_layout(block) for block in pl_module.backbone.transformer_blocks()]
        out.write_text(json.dumps({"train_batches": self.train_batches, "val_keys": self.val_keys,
                                   "world_size": trainer.world_size,
                                   "blocks_sharded": all(sharded for sharded, _ in layouts),
                                   "blocks_checkpointed": all(checkpointed for _, checkpointed in layouts),
                                   "compiled_graphs": counters["stats"]["unique_graphs"],
                                   "parameter_change": float(sum((p - q).abs().sum() for p, q in zip(
                                       self.full_parameters(pl_module), self.initial)))}))


class TrainStream(Callback):
    """Appends, per training batch, the step, the sample keys, a checksum of the pixels and the loss to
    ``CROCOMAN_RECORD_DIR/stream-rank<r>.jsonl``: line by line, so a killed run leaves its record."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        record = {"step": trainer.global_step, "keys": list(batch["key"]), "pixels": float(batch["image1"].sum()),
                  "loss": float(outputs["loss"])}
        path = Path(os.environ["CROCOMAN_RECORD_DIR"], f"stream-rank{trainer.global_rank}.jsonl")
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")


class KillAtStep(Callback):
    """SIGKILLs its own process after optimizer step ``step``: a node lost mid-epoch, no clean-up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StopAtStep(Callback):
    """Ends training cleanly after optimizer step ``step`` on every rank: a job whose time ran out."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


class FailOnRank(Callback):
    """Raises on one rank at one step: a crashed worker that the rest of the job must not wait for."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


class PoisonOnRank(Callback):
    """Makes the loss of optimizer step ``step + 1`` non-finite on rank ``rank`` only (its images become NaN),
    as one bad batch on one GPU does."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch["image1"].fill_(float("nan"))


class ParameterTrace(Callback):
    """Saves, per rank, every parameter (flattened) before each optimizer step and at the end, and the
    ``NonFiniteGuard``'s count of skipped steps, to ``CROCOMAN_RECORD_DIR/parameters-rank<r>.pt``."""

    def __init__(self) -> None:
        self.before_step: dict[int, Tensor] = {}

    @staticmethod
    def flat(module: LightningModule) -> Tensor:
        return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.before_step[trainer.global_step] = self.flat(pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        guards = [c for c in trainer.callbacks if type(c).__name__ == "NonFiniteGuard"]
        torch.save({"before_step": self.before_step, "final": self.flat(pl_module),
                    "skipped_steps": [guard.skipped_steps for guard in guards]},
                   Path(os.environ["CROCOMAN_RECORD_DIR"], f"parameters-rank{trainer.global_rank}.pt"))


class WandbRun(Callback):
    """Appends the W&B run's id and folder, as W&B reports them, to ``CROCOMAN_RECORD_DIR/wandb-runs.jsonl``
    (rank 0, which holds the run)."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                with Path(os.environ["CROCOMAN_RECORD_DIR"], "wandb-runs.jsonl").open("a") as file:
                    file.write(json.dumps({"id": run.id, "folder": str(Path(run.settings.sync_dir).resolve())}) + "\n")


class ProbeRecord(Callback):
    """Writes each rank's online-probe histories (per probe set) and ``probe/*`` callback metrics at the
    end of fit to ``CROCOMAN_RECORD_DIR/probes-rank<r>.json``."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_modules.probes import OnlineProbes

        histories = {callback.shards: callback.history for callback in trainer.callbacks
                     if isinstance(callback, OnlineProbes)}
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("probe/")}
        Path(os.environ["CROCOMAN_RECORD_DIR"], f"probes-rank{trainer.global_rank}.json").write_text(
            json.dumps({"histories": histories, "metrics": metrics}))


class SlowSaveAtStep(Callback):
    """Makes the checkpoint save of optimizer step ``step`` observable from outside: writes
    ``CROCOMAN_RECORD_DIR/save-started`` as the save begins, and adds ``ballast_mb`` MiB of zeros to that one
    checkpoint (to its state dict, which distributed checkpoints write as shards), so that writing it takes long
    enough for a test to SIGKILL the process in the middle of the write. Nothing of the save itself is changed."""

    def __init__(self, step: int, ballast_mb: int = 256) -> None:
        self.step, self.ballast_mb = step, ballast_mb

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if trainer.global_step == self.step:
            checkpoint["state_dict"]["ballast"] = torch.zeros(self.ballast_mb * 2**20 // 4)
            if trainer.is_global_zero:
                Path(os.environ["CROCOMAN_RECORD_DIR"], "save-started").write_text(str(self.step))


class EncoderAtStart(Callback):
    """Saves the module's backbone weights (``backbone.*`` names) as they are when training starts, before the
    first step, to ``CROCOMAN_RECORD_DIR/backbone-at-start.pt``."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            state = {f"backbone.{name}": tensor.detach().clone()
                     for name, tensor in pl_module.backbone.state_dict().items()}
            torch.save(state, Path(os.environ["CROCOMAN_RECORD_DIR"], "backbone-at-start.pt"))
