"""NaN/Inf losses: stop with an actionable message, or skip the update, as configured."""

import pytest
import torch
from lightning import Trainer

from datamodules import PairDataModule
from lightning_modules import PretrainModule
from lightning_modules.callbacks import NonFiniteGuard
from tests.test_pretrain_module import tiny_module


class PoisonedAtStep2(PretrainModule):
    """The loss of optimizer step 2 is NaN, as with an exploding batch."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss


def fit(module, guard: NonFiniteGuard, pair_shards, tmp_path, steps: int = 4) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_steps=steps, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[guard], default_root_dir=tmp_path)
    data = PairDataModule(str(pair_shards / "train"), batch_size=2, num_workers=0, image_size=32, epoch_pairs=64,
                          shuffle_buffer=2)
    trainer.fit(module, datamodule=data)
    return trainer


def test_stop_names_the_step_and_the_fixes(pair_shards, tmp_path):
    module = tiny_module(PoisonedAtStep2)
    # step 2 logs a finite loss but applies NaN gradients; the next logged loss is NaN
    with pytest.raises(RuntimeError, match=r"loss became nan at step 4\. Usual fixes: a lower lr"):
        fit(module, NonFiniteGuard("stop"), pair_shards, tmp_path)


def test_skip_drops_exactly_the_poisoned_update(pair_shards, tmp_path):
    module = tiny_module(PoisonedAtStep2)
    snapshots = []
    module.on_train_batch_start = lambda batch, batch_idx: snapshots.append(
        module.backbone.patch_embed.proj.weight.detach().clone())
    guard = NonFiniteGuard("skip")
    fit(module, guard, pair_shards, tmp_path, steps=4)
    assert guard.skipped_steps == 1
    assert torch.isfinite(module.backbone.patch_embed.proj.weight).all()
    assert torch.equal(snapshots[2], snapshots[3])  # the NaN batch changed nothing
    assert not torch.equal(snapshots[1], snapshots[2])  # the others did train
