"""What every crocoman DataModule shares: the per-device batch size, the skipped-sample tally, the loaders,
and the last step of every batch's images (uint8 to float, colour jitter when it runs on the device)."""

from collections.abc import Callable

import torch
from lightning import LightningDataModule

from datamodules.color import jitter_batch
from datamodules.format import Batch, Item, TarSample
from datamodules.health import SKIP_KINDS, pop_skips
from datamodules.shards import StreamSeeds, eval_loader, expand_shards, shard_sources, train_loader
from datamodules.workers import start_worker_server

AUGMENT_ON = ("worker", "device")


class ShardDataModule(LightningDataModule):
    """Base of the DataModules over WebDataset shards.

    ``batch_size`` is public because the LR scaling of every task reads it; ``skipped`` holds this
    rank's running count of skipped samples per kind in ``SKIP_KINDS`` (see ``datamodules.health``).
    Subclasses save ``train_shards``, ``train_weights``, ``val_shards``, ``test_shards``,
    ``num_workers`` and ``shuffle_buffer`` as hyper-parameters and say how one tar sample becomes
    tensors (``_sampler``) and how long a training epoch is (``samples_per_epoch``).

    Workers hand over the ``image_keys`` entries as uint8 (a quarter of float32's bytes through
    shared and pinned memory, and no conversion on the worker's core); ``on_after_batch_transfer``
    turns them into float in [0, 1] on the batch's device, and applies the colour jitter there
    when ``augment_on="device"`` (the workers then only draw its parameters, sent as ``<key>_jitter``).
    Code that reads the loaders without a Trainer calls ``on_after_batch_transfer`` itself.
    """

    image_keys: tuple[str, ...] = ()

    def __init__(self, batch_size: int, augment_on: str = "worker") -> None:
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on={augment_on!r}: choose one of {AUGMENT_ON} (where the colour jitter runs)")
        self.batch_size = batch_size
        self.augment_on = augment_on
        self.skipped = torch.zeros(len(SKIP_KINDS), dtype=torch.long)

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        # Still on the CPU here: tallying costs no device synchronisation.
        self.skipped = pop_skips(batch, self.skipped)
        return batch

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        for key in self.image_keys:
            images = batch[key].float().div_(255.0)
            jitter = batch.pop(f"{key}_jitter", None)
            batch[key] = images if jitter is None else jitter_batch(images, jitter)
        return batch

    def setup(self, stage: str) -> None:
        start_worker_server(self.hparams.num_workers)

    def pin_memory(self) -> bool:
        """Page-locked batches when training on a GPU, so the copies overlap with compute."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _sampler(self, train: bool) -> Callable[[TarSample], Item | list[Item]]:
        """The map stage from one raw tar sample to tensors (augmented when ``train``)."""
        raise NotImplementedError

    def samples_per_epoch(self) -> int:
        """Training samples per epoch over all ranks (the stream is resampled, so this is a choice)."""
        raise NotImplementedError

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        hp = self.hparams
        batches_per_rank = self.samples_per_epoch() // (self.batch_size * self.world_size())
        if batches_per_rank < 1:
            raise ValueError(f"an epoch of {self.samples_per_epoch()} samples is less than one batch per rank "
                             f"({self.batch_size} x {self.world_size()} ranks)")
        return train_loader(shard_sources(hp.train_shards, hp.train_weights), hp.train_weights,
                            self._sampler(train=True), self.batch_size, hp.num_workers, batches_per_rank,
                            hp.shuffle_buffer, self.stream_seeds(), self.pin_memory())

    def stream_seeds(self) -> StreamSeeds:
        """Seeds for the training stream at the epoch (and batch) the trainer starts from, restored
        ones included, so a resumed run continues the data stream instead of replaying it."""
        trainer = self.trainer
        if trainer is None:
            return StreamSeeds(torch.initial_seed(), rank=0, epoch=0, skip_batches=0)
        epoch_loop = trainer.fit_loop.epoch_loop
        return StreamSeeds(torch.initial_seed(), rank=trainer.global_rank, epoch=trainer.current_epoch,
                           skip_batches=epoch_loop.batch_progress.current.processed)

    def _eval_loader(self, shards: str | list[str] | None) -> torch.utils.data.DataLoader | list:
        if shards is None:
            return []
        return eval_loader(expand_shards(shards), self._sampler(train=False), self.batch_size,
                           self.hparams.num_workers, self.rank(), self.world_size(), self.pin_memory())

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.val_shards)

    def test_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.test_shards or self.hparams.val_shards)

    def predict_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.test_shards or self.hparams.val_shards)
