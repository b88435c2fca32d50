"""What every task head shares: it sizes itself from the backbone it is bound to.

Heads are chosen in YAML with only their own hyper-parameters; the LightningModule calls
``bind(backbone)`` once, and the head reads the backbone's public attributes (``embed_dim``,
``patch_size``, ``patch_grid`` ...) to build its layers. That keeps YAML free of repeated
dimensions and keeps heads out of backbone internals.
"""

from abc import ABC, abstractmethod

from torch import nn


class Head(nn.Module, ABC):
    @abstractmethod
    def bind(self, backbone: nn.Module) -> None:
        """Create the head's layers for ``backbone``; called once before training."""
