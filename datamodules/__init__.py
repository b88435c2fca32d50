"""LightningDataModules over WebDataset shards (and plain image folders for prediction)."""

from datamodules.images import ImageFolderDataModule
from datamodules.labelled import LabelledDataModule
from datamodules.mesh import MeshDataModule
from datamodules.pairs import PairDataModule

__all__ = ["ImageFolderDataModule", "LabelledDataModule", "MeshDataModule", "PairDataModule"]
