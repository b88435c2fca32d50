"""The shared fine-tuning base: encoder loading, probing, layer-wise LR decay; crop geometry of labelled data."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from PIL import Image

from backbone import CroCoNet
from datamodules import LabelledDataModule
from datamodules.labelled import LabelledSample
from heads import ClassificationHead
from lightning_modules import GestureModule
from lightning_modules.base import warmup_cosine
from tests.test_gesture import pretrain_checkpoint
from crocoman.synth import GESTURE_NAMES, write_labelled_shards

SIZES = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1,
         "decoder_num_heads": 2}


@pytest.fixture(scope="module")
def hand_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hands")
    write_labelled_shards(out, 16, task="hand", image_size=32, samples_per_shard=8, val_samples=8)
    return out


def gesture_module(**kwargs) -> GestureModule:
    backbone = CroCoNet(**{**SIZES, "drop_path_rate": 0.5})
    return GestureModule(backbone, ClassificationHead(), class_names=list(GESTURE_NAMES), **kwargs)


def encoder_and_decoder(module) -> tuple[dict, dict]:
    state = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    encoder = {k: v for k, v in state.items() if k.startswith(("patch_embed.", "enc_"))}
    return encoder, {k: v for k, v in state.items() if k not in encoder}


def test_encoder_loads_from_a_pretraining_checkpoint_and_the_decoder_is_ignored(tmp_path):
    path = tmp_path / "pretrain.ckpt"
    pretrain_checkpoint(path, **SIZES)
    pretrained = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    torch.manual_seed(1)
    fresh_encoder, fresh_decoder = encoder_and_decoder(gesture_module())
    torch.manual_seed(1)
    encoder, decoder = encoder_and_decoder(gesture_module(pretrained=str(path)))
    for name, value in encoder.items():
        torch.testing.assert_close(value, pretrained[f"backbone.{name}"], msg=name)
    assert not torch.equal(encoder["enc_blocks.0.attn.qkv.weight"], fresh_encoder["enc_blocks.0.attn.qkv.weight"])
    for name, value in decoder.items():  # untouched: still this module's own initialisation
        torch.testing.assert_close(value, fresh_decoder[name], msg=name)

    with pytest.raises(FileNotFoundError, match="make pretrain"):
        gesture_module(pretrained=str(tmp_path / "missing.ckpt"))
    wide = CroCoNet(**{**SIZES, "embed_dim": 64})
    with pytest.raises(RuntimeError, match="does not fit the backbone"):
        GestureModule(wide, ClassificationHead(), class_names=list(GESTURE_NAMES), pretrained=str(path))


class Capture(Callback):
    """The optimiser as built, and whether backbone/head were in training mode during steps."""

    def on_train_start(self, trainer, pl_module):
        self.optimizer = trainer.optimizers[0]
        self.modes = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.add((pl_module.backbone.training, pl_module.head.training))


def fit(module: GestureModule, shards: Path, steps: int, root: Path) -> Capture:
    capture = Capture()
    data = LabelledDataModule(str(shards / "train"), val_shards=str(shards / "val"), label_keys=("cls",),
                              batch_size=4, num_workers=0, image_size=32, epoch_samples=4 * steps, shuffle_buffer=8)
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[capture], default_root_dir=root)
    trainer.fit(module, datamodule=data)
    return capture


def test_probing_trains_the_head_only_with_the_encoder_in_eval_mode(hand_shards, tmp_path):
    module = gesture_module(freeze_encoder=True, lr=1e-1)
    encoder, decoder = encoder_and_decoder(module)
    head = {k: v.clone() for k, v in module.head.state_dict().items()}
    capture = fit(module, hand_shards, steps=3, root=tmp_path)

    after_encoder, after_decoder = encoder_and_decoder(module)
    for name, value in {**encoder, **decoder}.items():
        torch.testing.assert_close(value, {**after_encoder, **after_decoder}[name], msg=name)
    assert any(not torch.equal(value, module.head.state_dict()[name]) for name, value in head.items())
    optimised = {id(p) for group in capture.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.head.parameters()}
    assert capture.modes == {(False, True)}  # the frozen encoder runs without drop-path; the head trains


def test_layer_decay_scales_lr_by_depth_and_leaves_the_decoder_out(hand_shards, tmp_path):
    decay = 0.5
    module = gesture_module(layer_decay=decay, lr=1e-3)
    capture = fit(module, hand_shards, steps=1, root=tmp_path)
    peak = 1e-3 * 4 / 256
    lr_of = {id(p): group["initial_lr"] for group in capture.optimizer.param_groups for p in group["params"]}
    names = dict(module.named_parameters())

    def lr(name: str) -> float:
        return lr_of[id(names[name])]

    depth = SIZES["depth"]  # layers: patch embedding 0, blocks 1..depth (final norm with the last), head depth + 1
    assert lr("head.mlp.fc2.weight") == pytest.approx(peak)
    assert lr("backbone.enc_norm.weight") == pytest.approx(peak * decay)
    for block in range(depth):
        assert lr(f"backbone.enc_blocks.{block}.attn.qkv.weight") == pytest.approx(peak * decay ** (depth - block))
    assert lr("backbone.patch_embed.proj.weight") == pytest.approx(peak * decay ** (depth + 1))
    decoder = [n for n in names if n.startswith(("backbone.dec", "backbone.mask_token"))]
    assert decoder and not any(id(names[n]) in lr_of or names[n].requires_grad for n in decoder)
    assert set(lr_of) == {id(p) for p in module.parameters() if p.requires_grad}


def test_schedule_ends_each_layer_decayed_group_at_its_own_floor():
    """Warmup, then cosine to min_lr_ratio x each group's own peak: a shared absolute floor would
    raise the LR of the strongly decayed layers at the end of training."""
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 1.0}, {"params": [weights[1]], "lr": 0.01}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps=4, total_steps=20,
                                                                          min_ratio=0.1))
    lrs = []
    for _ in range(20):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    lrs.append([group["lr"] for group in optimizer.param_groups])
    assert lrs[0] == pytest.approx([0.25, 0.0025])  # warmup starts at 1/4 of the peak
    assert lrs[3] == pytest.approx([1.0, 0.01])  # peak at the end of warmup
    assert lrs[12] == pytest.approx([0.55, 0.0055])  # half-way down the cosine: the mean of peak and floor
    assert lrs[20] == pytest.approx([0.1, 0.001])  # each group at 10% of its own peak
    assert all(a >= b for a, b in zip([lr[0] for lr in lrs[3:]], [lr[0] for lr in lrs[4:]]))


def test_crops_move_keypoints_and_intrinsics_with_the_pixels():
    """A bright block and a keypoint at its centre stay together through random resized crops."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[22:28, 30:36] = 255  # pixel centres 30..35 and 22..27: centre (32.5, 24.5)
    jpg, npz = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(jpg, format="PNG")  # lossless; PIL opens any format
    np.savez(npz, keypoints_2d=np.array([[32.5, 24.5, 1.0]], np.float32))
    K = [[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]]
    point_m = torch.tensor([1.0, 1.0, 50.0])  # K projects it to (32.5, 24.5)
    sample = {"__key__": "s", "jpg": jpg.getvalue(), "npz": npz.getvalue(),
              "json": json.dumps({"K": K, "has": {"keypoints_2d": True}})}
    crops = LabelledSample(("json", "npz"), image_size=32, augment=True, crop_scale=(0.7, 1.0), color_jitter=0.0,
                           num_classes=None)
    torch.manual_seed(0)
    for _ in range(5):
        out = crops(sample)
        weights = out["image"].float().mean(dim=0)
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        centroid = torch.stack(((weights * xs).sum(), (weights * ys).sum())) / weights.sum()
        keypoint = out["keypoints_2d"][0, :2]
        torch.testing.assert_close(keypoint, centroid, atol=0.25, rtol=0)
        projected = out["K"] @ point_m
        torch.testing.assert_close(projected[:2] / projected[2], keypoint, atol=1e-4, rtol=0)
        assert out["has"]["keypoints_2d"]


def test_body_shards_decode_with_every_label_key(tmp_path):
    write_labelled_shards(tmp_path, 4, task="body", image_size=64, samples_per_shard=4)
    data = LabelledDataModule(str(tmp_path / "train"), label_keys=("json", "npz", "iuv.png"), batch_size=4,
                              num_workers=0, image_size=32, epoch_samples=4, shuffle_buffer=4)
    assert data.classes is None
    (batch,) = list(data.train_dataloader())
    assert batch["image"].shape == (4, 3, 32, 32) and batch["K"].shape == (4, 3, 3)
    assert batch["keypoints_2d"].shape[::2] == (4, 3) and batch["vertices"].shape[-1] == 3
    assert batch["iuv"].shape == (4, 3, 32, 32) and batch["iuv"].dtype == torch.uint8
    assert set(batch["iuv"][:, 0].unique().tolist()) <= set(range(25))  # nearest: part ids stay part ids
    assert batch["has"]["densepose"].all() and "label" not in batch
