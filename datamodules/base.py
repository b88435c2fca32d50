"""What every crocoman DataModule shares: the per-device batch size, the skipped-sample tally, the loaders."""

from collections.abc import Callable

import torch
from lightning import LightningDataModule

from datamodules.health import SKIP_KINDS, pop_skips
from datamodules.shards import StreamSeeds, eval_loader, expand_shards, shard_sources, train_loader


class ShardDataModule(LightningDataModule):
    """Base of the DataModules over WebDataset shards.

    ``batch_size`` is public because the LR scaling of every task reads it; ``skipped`` holds this
    rank's running count of skipped samples per kind in ``SKIP_KINDS`` (see ``datamodules.health``).
    Subclasses save ``train_shards``, ``train_weights``, ``val_shards``, ``test_shards``,
    ``num_workers`` and ``shuffle_buffer`` as hyper-parameters and say how one tar sample becomes
    tensors (``_sampler``) and how long a training epoch is (``samples_per_epoch``).
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.skipped = torch.zeros(len(SKIP_KINDS), dtype=torch.long)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Still on the CPU here: tallying costs no device synchronisation.
        self.skipped = pop_skips(batch, self.skipped)
        return batch

    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _sampler(self, train: bool) -> Callable[[dict], dict]:
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
                            hp.shuffle_buffer, self.stream_seeds())

    def stream_seeds(self) -> StreamSeeds:
        """Seeds for the training stream at the epoch (and batch) the trainer starts from, restored
        ones included, so a resumed run continues the data stream instead of replaying it."""
        trainer = self.trainer
        if trainer is None:
            return StreamSeeds(torch.initial_seed(), epoch=0, skip_batches=0)
        epoch_loop = trainer.fit_loop.epoch_loop
        return StreamSeeds(torch.initial_seed(), epoch=trainer.current_epoch,
                           skip_batches=epoch_loop.batch_progress.current.processed)

    def _eval_loader(self, shards: str | list[str] | None) -> torch.utils.data.DataLoader | list:
        if shards is None:
            return []
        return eval_loader(expand_shards(shards), self._sampler(train=False), self.batch_size,
                           self.hparams.num_workers, self.world_size())

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.val_shards)

    def test_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.test_shards or self.hparams.val_shards)

    def predict_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._eval_loader(self.hparams.test_shards or self.hparams.val_shards)
