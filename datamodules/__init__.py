"""LightningDataModules over WebDataset shards."""

from datamodules.labelled import LabelledDataModule
from datamodules.pairs import PairDataModule

__all__ = ["LabelledDataModule", "PairDataModule"]
