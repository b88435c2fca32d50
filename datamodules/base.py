"""What every crocoman DataModule shares: the per-device batch size and the skipped-sample tally."""

import torch
from lightning import LightningDataModule

from datamodules.health import SKIP_KINDS, pop_skips


class ShardDataModule(LightningDataModule):
    """Base of the DataModules over WebDataset shards.

    ``batch_size`` is public because the LR scaling of every task reads it; ``skipped`` holds this
    rank's running count of skipped samples per kind in ``SKIP_KINDS`` (see ``datamodules.health``).
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
