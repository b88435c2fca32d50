"""LightningDataModules over WebDataset shards."""

from datamodules.pairs import PairDataModule

__all__ = ["PairDataModule"]
