import logging

import pytest
import torch
from lightning import Callback, Trainer

from backbone import CroCoNet, HumanMasking
from backbone.weights import to_croco_checkpoint
from datamodules import PairDataModule
from heads import CompletionHead
from lightning_modules import PretrainModule


def tiny_module(cls: type[PretrainModule] = PretrainModule, **kwargs) -> PretrainModule:
    backbone = CroCoNet(img_size=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                        decoder_num_heads=2)
    return cls(backbone, CompletionHead(), **kwargs)


def test_pretrained_croco_file_initialises_backbone_and_head(tmp_path):
    source = tiny_module()
    path = tmp_path / "croco.pth"
    torch.save(to_croco_checkpoint(source.backbone, source.head), path)
    loaded = tiny_module(pretrained=str(path))
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(tiny_module().head.proj.weight, source.head.proj.weight)


class CaptureOptimizer(Callback):
    def on_train_start(self, trainer, pl_module):
        self.optimizer = trainer.optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler


def test_optimizer_recipe(pair_shards, tmp_path):
    module = tiny_module(lr=1e-3, weight_decay=0.05, warmup_steps=2, masking=HumanMasking(0.75))
    capture = CaptureOptimizer()
    trainer = Trainer(accelerator="cpu", max_steps=4, accumulate_grad_batches=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[capture],
                      default_root_dir=tmp_path)
    data = PairDataModule(str(pair_shards / "train"), batch_size=4, num_workers=0, image_size=32,
                          epoch_pairs=64, shuffle_buffer=4)
    trainer.fit(module, datamodule=data)
    peak = 1e-3 * (4 * 2) / 256
    groups = capture.optimizer.param_groups
    decayed, undecayed = ([id(p) for g in groups if g["weight_decay"] == wd for p in g["params"]]
                          for wd in (0.05, 0.0))
    names = {id(p): n for n, p in module.named_parameters()}
    assert {names[i] for i in undecayed} >= {"backbone.mask_token", "backbone.enc_norm.weight", "head.proj.bias"}
    assert all(names[i].endswith("weight") and "norm" not in names[i] for i in decayed)
    assert capture.optimizer.defaults["betas"] == (0.9, 0.95)
    assert [g["initial_lr"] for g in capture.optimizer.param_groups] == [peak, peak]
    assert trainer.global_step == 4


def test_lr_scales_with_devices_nodes_and_accumulation_and_is_printed(caplog):
    """The configured lr is for a global batch of 256; the peak used is lr x batch x devices x nodes x
    accumulation / 256, and start-up says so. A 3-node x 2-device trainer, built but not launched."""
    module = tiny_module(lr=1e-3, warmup_steps=0)
    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, num_nodes=3, accumulate_grad_batches=2,
                      max_epochs=-1, max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    data = PairDataModule("unused", batch_size=4)  # only its batch size is read
    module.trainer = trainer
    trainer.strategy.connect(module)
    trainer._data_connector.attach_datamodule(module, datamodule=data)
    with caplog.at_level(logging.INFO):
        optimizer = module.configure_optimizers()["optimizer"]
    peak = 1e-3 * 4 * 2 * 3 * 2 / 256
    assert [group["initial_lr"] for group in optimizer.param_groups] == pytest.approx([peak, peak], rel=1e-12)
    assert "AdamW: peak lr 0.000188 (base 0.001 x global batch 48 / 256)" in caplog.text


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing block activations in the backward pass must not change what is learned."""
    plain, checkpointed = tiny_module(), tiny_module(activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.configure_model()
    torch.manual_seed(0)
    batch = {"image1": torch.rand(2, 3, 32, 32), "image2": torch.rand(2, 3, 32, 32), "pair_type": torch.tensor([0, 1])}
    for module in plain, checkpointed:
        torch.manual_seed(1)  # the same mask
        sum(module.complete(batch)[2].values()).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert list(plain.state_dict()) == list(checkpointed.state_dict())  # checkpoints stay interchangeable
