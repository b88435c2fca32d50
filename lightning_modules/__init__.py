"""One LightningModule per task, all built on ``CrocoTask``."""

from lightning_modules.base import CrocoTask
from lightning_modules.densepose import DensePoseModule
from lightning_modules.gesture import GestureModule
from lightning_modules.mesh import MeshRecoveryModule
from lightning_modules.pretrain import PAIR_TYPES, PretrainModule

__all__ = ["PAIR_TYPES", "CrocoTask", "DensePoseModule", "GestureModule", "MeshRecoveryModule", "PretrainModule"]
