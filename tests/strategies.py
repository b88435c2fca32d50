"""Strategies that tests put in place of a trainer snippet's (``--trainer.strategy.class_path=...``)."""

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel


class CpuFSDPStrategy(FSDPStrategy):
    """``fsdp.yaml``'s FSDP on CPU ranks (gloo), so the suite runs the snippet without a GPU.

    Two things keep Lightning's FSDP off CPU, and only those change: its accelerator check refuses the
    ``FSDPStrategy`` class itself (a subclass passes), and it hands torch's FSDP the device index, which is
    ``None`` on CPU and reads as "no accelerator"; here the root is wrapped with the CPU device named, with the
    snippet's settings (unit policy, sharding, precision), and Lightning's own setup takes it from there
    (activation checkpointing, optimiser, sharded checkpoints).
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                           **self.kwargs)
        self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn that it ignores it
        return super()._setup_model(wrapped)
