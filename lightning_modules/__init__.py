"""One LightningModule per task, all built on ``CrocoTask``."""

from lightning_modules.base import CrocoTask
from lightning_modules.gesture import GestureModule
from lightning_modules.pretrain import PAIR_TYPES, PretrainModule

__all__ = ["PAIR_TYPES", "CrocoTask", "GestureModule", "PretrainModule"]
