"""DensePose: metrics and losses on hand-computed cases, the DPT head, both configs through the CLI, and a
short training on synthetic bodies that beats the all-background answer."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer, seed_everything
from PIL import Image

from backbone import CroCoNet
from datamodules import LabelledDataModule
from datamodules.base import ShardDataModule
from datamodules.labelled import UNLABELLED
from heads import DenseHead
from heads.dense import NUM_PARTS, evenly_spaced_layers
from lightning_modules import DensePoseModule
from lightning_modules.base import CrocoTask
from lightning_modules.dense_metrics import (
    GPSAveragePrecision,
    PartSegmentation,
    UVError,
    dense_prediction,
    densepose_metrics,
    point_similarity,
)
from lightning_modules.densepose import densepose_losses, densepose_picture, part_class_weights
from tests.conftest import REPO
from tests.test_gesture import ON_CPU, TINY_MODEL, data_args, fit_cpu_config_from_the_demo
from crocoman.cli import CrocomanCLI
from crocoman.main import main
from crocoman.synth import write_labelled_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def body_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic people with dense IUV labels, as `crocoman-data labelled --task body` writes them."""
    out = tmp_path_factory.mktemp("bodies")
    write_labelled_shards(out, 64, task="body", image_size=64, samples_per_shard=16, val_samples=16)
    return out


def iuv_map(parts: list[list[int]], u: float | list[list[float]] = 0.0, v: float = 0.0) -> torch.Tensor:
    """A (1, 3, H, W) uint8 label map from a part grid and U, V given in [0, 1]."""
    part = torch.tensor(parts, dtype=torch.uint8)
    u_map = torch.as_tensor(u, dtype=torch.float32).expand(part.shape)
    v_map = torch.full(part.shape, v)
    return torch.stack([part, (u_map * 255).round().to(torch.uint8), (v_map * 255).round().to(torch.uint8)])[None]


def test_part_segmentation_ignores_unlabelled_pixels():
    target = iuv_map([[0, 1, 255], [2, 2, 0]])
    predicted = torch.tensor([[[0, 1, 1], [2, 0, 0]]])
    values = PartSegmentation()(predicted, torch.zeros(1, 2, 2, 3), target)
    # Labelled pixels: 5, of which 4 are right. IoU: background 2/3 (one part pixel predicted as background),
    # part 1: 1/1 (the prediction on the 255 pixel does not count), part 2: 1/2; the other parts never occur.
    assert values["pixel_acc"] == pytest.approx(4 / 5)
    assert values["miou"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert values["miou_fg"] == pytest.approx((1 + 1 / 2) / 2)


def test_uv_error_counts_only_right_foreground_pixels():
    target = iuv_map([[0, 1, 255], [2, 2, 0]])
    predicted = torch.tensor([[[0, 1, 1], [2, 0, 0]]])
    uv = torch.zeros(1, 2, 2, 3)
    uv[0, :, 0, 1] = torch.tensor([0.3, 0.4])  # part 1, right: error 0.5
    uv[0, :, 0, 2] = 1.0  # unlabelled pixel
    uv[0, :, 1, 1] = 1.0  # part 2 predicted as background
    uv[0, :, 0, 0] = 1.0  # background
    assert UVError()(predicted, uv, target) == pytest.approx((0.5 + 0.0) / 2)
    assert UVError().compute().isnan()  # nothing scored yet reads as unknown, not as perfect


def test_gps_ap_on_constructed_images():
    # kappa = half a part scoring 0.5, so a point's similarity is 2 ** (-4 d^2) for a UV error d.
    assert point_similarity(torch.ones(1, 1, 1, dtype=torch.long), torch.tensor([[[[0.5]], [[0.0]]]]),
                            iuv_map([[1]]))[0] == pytest.approx(0.5)
    target = torch.cat([iuv_map([[1, 2, 3]]), iuv_map([[1, 2, 3]]), iuv_map([[1, 2, 3]]), iuv_map([[0, 255, 0]]),
                        iuv_map([[4, 4, 0]])])
    predicted = target[:, 0].long().clone()
    predicted[1, 0, 2] = 5  # image 1: one of three points on the wrong part: GPS 2/3
    predicted[3] = 0  # image 3: no labelled foreground point: not scored
    predicted[4] = 0  # image 4: background everywhere: GPS 0
    uv = torch.zeros(5, 2, 1, 3)
    uv[2, 0] = 0.25  # image 2: every point 0.25 off: GPS 2 ** -0.25 = 0.84
    gps, scored = point_similarity(predicted, uv, target)
    assert gps[[0, 1, 2, 4]].tolist() == pytest.approx([1.0, 2 / 3, 2**-0.25, 0.0]) and scored.tolist() == [
        True, True, True, False, True]
    values = GPSAveragePrecision()(predicted, uv, target)
    # thresholds 0.5:0.05:0.95 passed: image 0 all 10, image 1 4 (up to 0.65), image 2 7 (up to 0.8), image 4 none
    assert values["gps_ap"] == pytest.approx((10 + 4 + 7 + 0) / 40)
    assert values["gps_ap50"] == pytest.approx(3 / 4) and values["gps_ap75"] == pytest.approx(2 / 4)


def test_metric_collection_sums_over_batches():
    """Two updates give the metrics of the whole, as the DDP reduction of sum states does over ranks."""
    target = torch.cat([iuv_map([[0, 1], [2, 255]]), iuv_map([[3, 3], [0, 0]])])
    logits = torch.randn(2, 1 + NUM_PARTS, 2, 2, generator=torch.Generator().manual_seed(0))
    u, v = torch.rand(2, NUM_PARTS, 2, 2), torch.rand(2, NUM_PARTS, 2, 2)
    parts, uv = dense_prediction(logits, u, v)
    whole, split = densepose_metrics(), densepose_metrics()
    whole.update(parts, uv, target)
    split.update(parts[:1], uv[:1], target[:1])
    split.update(parts[1:], uv[1:], target[1:])
    expected, got = whole.compute(), split.compute()
    assert set(expected) == {"miou", "miou_fg", "pixel_acc", "uv_error", "gps_ap", "gps_ap50", "gps_ap75"}
    for name, value in expected.items():
        assert torch.allclose(got[name], value, equal_nan=True), name


def test_losses_ignore_unlabelled_pixels_and_other_charts():
    target = iuv_map([[0, 3, 255]], u=[[0.0, 0.2, 0.9]], v=0.0)
    logits = torch.zeros(1, 1 + NUM_PARTS, 1, 3, requires_grad=True)
    u = torch.full((1, NUM_PARTS, 1, 3), 0.7, requires_grad=True)  # 0.5 off on part 3's chart
    v = torch.zeros((1, NUM_PARTS, 1, 3), requires_grad=True)
    losses = densepose_losses({"part_logits": logits, "u": u, "v": v}, target, uv_beta=0.1)
    assert losses["parts"].item() == pytest.approx(math.log(1 + NUM_PARTS))  # uniform logits, 2 labelled pixels
    assert losses["uv"].item() == pytest.approx(0.5 - 0.1 / 2, abs=1e-3)  # smooth L1 past beta: |d| - beta / 2
    (losses["parts"] + losses["uv"]).backward()
    assert logits.grad[..., 2].abs().sum() == 0  # the 255 pixel
    charts_used = torch.zeros_like(u.grad, dtype=torch.bool)
    charts_used[0, 2, 0, 1] = True  # part 3 -> chart index 2, only at the part-3 pixel
    assert u.grad[~charts_used].abs().sum() == 0 and u.grad[charts_used].abs().sum() > 0
    assert v.grad.abs().sum() == 0  # V is exact where it is scored


def test_an_unlabelled_batch_gives_zero_loss_not_nan():
    target = iuv_map([[UNLABELLED, 200]])  # 200: no part id either, read as unlabelled
    outputs = {"part_logits": torch.randn(1, 1 + NUM_PARTS, 1, 2), "u": torch.rand(1, NUM_PARTS, 1, 2),
               "v": torch.rand(1, NUM_PARTS, 1, 2)}
    assert {name: value.item() for name, value in densepose_losses(outputs, target).items()} == {"parts": 0.0,
                                                                                              "uv": 0.0}


def test_a_part_id_outside_densepose_is_a_counted_bad_sample(body_shards, tmp_path):
    import io

    import webdataset as wds

    from datamodules.health import SKIP_KINDS, SKIPPED_KEY
    from datamodules.shards import expand_shards

    samples = list(wds.WebDataset(expand_shards(str(body_shards / "val")), shardshuffle=False))[:3]
    iuv = np.array(Image.open(io.BytesIO(samples[1]["iuv.png"])))
    iuv[0, 0, 0] = NUM_PARTS + 6
    buffer = io.BytesIO()
    Image.fromarray(iuv).save(buffer, format="PNG")
    samples[1]["iuv.png"] = buffer.getvalue()
    with wds.TarWriter(str(tmp_path / "bad-000000.tar")) as writer:
        for sample in samples:
            writer.write({key: value for key, value in sample.items() if key != "__url__"})
    data = LabelledDataModule(str(tmp_path), val_shards=str(tmp_path), label_keys=["iuv.png"], batch_size=4,
                              num_workers=0, image_size=32)
    (batch,) = list(data.val_dataloader())
    assert dict(zip(SKIP_KINDS, batch[SKIPPED_KEY].tolist()))["bad_sample"] == 1
    assert len(batch["key"]) == 2 and samples[1]["__key__"] not in batch["key"]


def test_class_weights():
    counts = torch.zeros(1 + NUM_PARTS, dtype=torch.long)
    counts[0], counts[1], counts[2] = 800, 100, 100
    inverse_sqrt = part_class_weights(counts, "inverse_sqrt")
    assert inverse_sqrt[:3].tolist() == pytest.approx([0.8**-0.5, 0.1**-0.5, 0.1**-0.5])
    assert part_class_weights(counts, "median_frequency")[:3].tolist() == pytest.approx([0.1 / 0.8, 1.0, 1.0])
    with pytest.raises(ValueError, match="median_frequency"):
        part_class_weights(counts, "median")


def test_head_shapes_and_gradients():
    size = 40  # an odd 5 x 5 patch grid: the fusion upsamples to each skip's own size
    backbone = CroCoNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=1,
                        decoder_embed_dim=32, decoder_num_heads=2)
    head = DenseHead(features=16, hidden=8)
    head.bind(backbone)
    assert head.layers == [0, 0, 0, 1] and evenly_spaced_layers(12) == [2, 5, 8, 11]
    images = torch.rand(2, 3, size, size)
    outputs = head(backbone.features(images, head.layers), backbone.image_grid(images))
    assert outputs["part_logits"].shape == (2, 1 + NUM_PARTS, size, size)
    assert outputs["u"].shape == outputs["v"].shape == (2, NUM_PARTS, size, size)
    assert 0 <= outputs["u"].min() and outputs["v"].max() <= 1
    sum(value.sum() for value in outputs.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert backbone.enc_blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_head_rejects_layers_outside_the_encoder():
    backbone = CroCoNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=1,
                        decoder_embed_dim=32, decoder_num_heads=2)
    with pytest.raises(ValueError, match=r"\[2\] outside the encoder's 2 blocks"):
        DenseHead(layers=[0, 1, -1, 2]).bind(backbone)


def test_picture_shows_image_parts_and_charts():
    iuv = iuv_map([[0, 1], [2, 255]])
    picture = densepose_picture(torch.rand(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 2]]]), torch.rand(1, 2, 2, 2), iuv)
    assert picture.shape == (3, 2 + 2 * 2, 2 + 7 * (2 + 2)) and 0 <= picture.min() and picture.max() <= 1


def test_cpu_config_fine_tunes_the_pretrained_demo_encoder(body_shards, tmp_path, monkeypatch, capsys, caplog):
    """densepose_cpu.yaml at its own model size, from the checkpoint path it names."""
    monkeypatch.chdir(tmp_path)
    checkpoint = fit_cpu_config_from_the_demo("densepose_cpu", [*data_args(body_shards, 32),
                                                                "--trainer.limit_val_batches=1"], caplog)
    run = tmp_path / "runs/densepose_cpu"
    assert checkpoint["global_step"] == 2
    assert [p.name for p in (run / "pictures").glob("val_densepose_*.png")] == ["val_densepose_step0000002.png"]
    assert "crocoman: finished 2 steps" in capsys.readouterr().out


def test_gpu_config_runs_on_cpu_at_tiny_size_and_tests_its_checkpoint(body_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = ["-c", str(REPO / "configs/finetune/densepose.yaml"), *TINY_MODEL, *data_args(body_shards, 32),
                 "--model.init_args.head.init_args.features=16", "--model.init_args.pretrained=null", *ON_CPU]
    main(["fit", *arguments, "--trainer.max_steps=2", "--trainer.limit_val_batches=1"])
    run = tmp_path / "runs/densepose_vitb"
    main(["test", *arguments, f"--ckpt_path={run / 'checkpoints/last.ckpt'}", "--trainer.limit_test_batches=1"])
    assert list((run / "pictures").glob("test_densepose_*.png"))
    # `crocoman predict` on plain images, two in one batch: part / U / V pictures and an iuv.png in the shards'
    # layout, which holds the module's own prediction for that image
    photos, out = tmp_path / "photos", tmp_path / "maps"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in "person", "other":  # noise: maps that differ from pixel to pixel and from image to image
        Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    images = ["--data=datamodules.ImageFolderDataModule", f"--data.paths={photos}", "--data.image_size=32",
              "--data.batch_size=2", "--data.num_workers=0"]
    main(["predict", *arguments, f"--ckpt_path={run / 'checkpoints/last.ckpt'}", *images,
          "--trainer.callbacks+=lightning_modules.predictions.DensePosePredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    assert Image.open(out / "person.png").size == (2 + 4 * (32 + 2), 2 + 32 + 2)  # image | parts | U | V
    # The same module, checkpoint and images, predicted in this process without the writer.
    cli = CrocomanCLI(model_class=CrocoTask, datamodule_class=ShardDataModule, subclass_mode_model=True,
                      subclass_mode_data=True, seed_everything_default=0, run=False, save_config_callback=None,
                      args=[*arguments, *images, "--trainer.logger=false"])
    (predicted,) = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=run / "checkpoints/last.ckpt")
    assert sorted(predicted["key"]) == ["other", "person"]
    written = {key: np.asarray(Image.open(out / f"{key}.iuv.png")) for key in predicted["key"]}
    for index, key in enumerate(predicted["key"]):
        iuv = written[key]
        assert iuv.shape == (32, 32, 3) and iuv.dtype == np.uint8 and iuv[..., 0].max() <= 24
        np.testing.assert_array_equal(iuv, predicted["iuv"][index].permute(1, 2, 0).numpy(), err_msg=key)
        assert len(np.unique(iuv[..., 0])) > 1 and len(np.unique(iuv[..., 1])) > 2  # a map, not a constant
    assert not np.array_equal(written["person"], written["other"])


def test_short_fit_beats_the_all_background_answer(body_shards, tmp_path):
    seed_everything(0)
    backbone = CroCoNet(img_size=48, patch_size=16, embed_dim=48, depth=4, num_heads=3, decoder_embed_dim=32,
                        decoder_depth=1, decoder_num_heads=2)
    module = DensePoseModule(backbone, DenseHead(features=32, hidden=16), lr=0.1, weight_decay=0.0, warmup_steps=5,
                             class_balanced=True, picture_rows=0)
    data = LabelledDataModule(str(body_shards / "train"), val_shards=str(body_shards / "val"),
                              label_keys=("iuv.png",), batch_size=8, num_workers=0, image_size=48,
                              epoch_samples=8 * 140, shuffle_buffer=32, crop_scale=(0.8, 1.0), color_jitter=0.1)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    background = densepose_metrics()
    for batch in data.val_dataloader():
        background.update(torch.zeros_like(batch["iuv"][:, 0], dtype=torch.long),
                          torch.zeros_like(batch["iuv"][:, 1:], dtype=torch.float32), batch["iuv"])
    baseline = background.compute()["miou"]  # background IoU = its pixel share, every part 0: about 0.9 / 25
    miou, miou_fg = trainer.callback_metrics["val/miou"], trainer.callback_metrics["val/miou_fg"]
    assert miou > 1.75 * baseline and miou_fg > 0.03, (miou, miou_fg, baseline)  # seed 0: 2.4x, fg 0.05

    (predicted, *_) = trainer.predict(module, datamodule=data)
    assert predicted["iuv"].dtype == torch.uint8 and predicted["iuv"].shape == (8, 3, 48, 48)
    assert torch.equal(predicted["iuv"][:, 0].long(), predicted["parts"])
    assert ((1 / (1 + NUM_PARTS) <= predicted["confidence"]) & (predicted["confidence"] <= 1)).all()
