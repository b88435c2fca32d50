"""Gesture classification: metrics, head, the two configs through the CLI, and learning a toy set."""

import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from lightning import Trainer, seed_everything
from PIL import Image, ImageDraw

from backbone import CroCoNet
from datamodules import LabelledDataModule
from heads import ClassificationHead, CompletionHead
from lightning_modules import GestureModule, PretrainModule
from lightning_modules.gesture import classification_metrics, confusion_picture
from tests.conftest import REPO
from crocoman.main import main
from crocoman.synth import GESTURE_NAMES, write_labelled_shards

TOY_CLASSES = ["disc", "horizontal_bar", "vertical_bar"]


def toy_shape(label: int, size: int, rng: random.Random) -> Image.Image:
    """A crop whose class is a shape (disc, horizontal or vertical bar) at a random place and colour: separable
    enough for a tiny ViT to learn in seconds, which the synthetic hands are not."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(0, 100) for _ in range(3)))
    long, short = rng.uniform(0.6, 0.9) * size, rng.uniform(0.15, 0.25) * size
    w, h = [(short * 2, short * 2), (long, short), (short, long)][label]
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    shape = ImageDraw.Draw(image).ellipse if label == 0 else ImageDraw.Draw(image).rectangle
    shape((x, y, x + w, y + h), fill=tuple(rng.randrange(150, 256) for _ in range(3)))
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_toy_shards(out: Path, train: int, val: int, size: int = 32, per_shard: int = 16) -> Path:
    """Shape crops with the keys gesture training reads (jpg, cls) and manifest.json naming the classes."""
    rng = random.Random(0)
    for split, count in ("train", train), ("val", val):
        (out / split).mkdir(parents=True)
        for first in range(0, count, per_shard):
            with wds.TarWriter(str(out / split / f"labelled-{first // per_shard:06d}.tar")) as sink:
                for index in range(first, min(first + per_shard, count)):
                    label = index % len(TOY_CLASSES)
                    sink.write({"__key__": f"{split}{index:05d}", "jpg": jpeg(toy_shape(label, size, rng)),
                                "cls": str(label)})
    (out / "manifest.json").write_text(json.dumps({"classes": TOY_CLASSES}))
    return out


@pytest.fixture(scope="module")
def hand_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic hands in eight gestures, as `crocoman-data labelled --task hand` writes them."""
    out = tmp_path_factory.mktemp("hands")
    write_labelled_shards(out, 16, task="hand", image_size=64, samples_per_shard=8, val_samples=8)
    return out


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_shards(tmp_path_factory.mktemp("toy"), train=96, val=48)


def test_metrics_match_a_hand_computed_imbalanced_case():
    # 6 samples of class 0, 2 of class 1, 2 of class 2; always answering 0 is right 6/10 times.
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    values = classification_metrics(3)(torch.nn.functional.one_hot(predicted, 3).float(), target)
    assert values["top1"] == pytest.approx(6 / 10)
    # per-class recall: 5/6, 1/2, 0/2
    assert values["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)


def test_confusion_picture_is_an_rgb_image():
    picture = confusion_picture(torch.tensor([[5, 1], [0, 2]]), ["open_palm", "fist"])
    assert picture.shape[0] == 3 and picture.shape[1] == 3 * 28 and 0 <= picture.min() and picture.max() <= 1


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_head_shapes(pool):
    backbone = CroCoNet(img_size=32, embed_dim=32, depth=1, num_heads=2, decoder_depth=1, decoder_embed_dim=32,
                        decoder_num_heads=2)
    head = ClassificationHead(pool=pool)
    head.bind(backbone)
    tokens, _ = backbone.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="set_num_classes"):
        head(tokens)
    head.set_num_classes(5)
    assert head(tokens).shape == (2, 5)
    with pytest.raises(ValueError, match="built for 5 classes"):
        head.set_num_classes(4)


def test_labels_are_read_and_a_sample_without_one_is_a_counted_skip(hand_shards, tmp_path):
    with wds.TarWriter(str(tmp_path / "labelled-000000.tar")) as sink:
        jpg = jpeg(toy_shape(0, 32, random.Random(0)))
        sink.write({"__key__": "unlabelled", "jpg": jpg})
        sink.write({"__key__": "out_of_range", "jpg": jpg, "cls": "7"})
        sink.write({"__key__": "good", "jpg": jpg, "cls": "2"})
    data = LabelledDataModule(str(tmp_path), val_shards=str(tmp_path), label_keys=("cls",), classes=TOY_CLASSES,
                              batch_size=4, num_workers=0, image_size=32)
    (batch,) = list(data.val_dataloader())
    assert batch["key"] == ["good"] and batch["label"].tolist() == [2] and batch["image"].shape == (1, 3, 32, 32)
    assert data.on_before_batch_transfer(batch, 0) is batch and data.skipped.tolist() == [0, 0, 1, 1]
    assert LabelledDataModule(str(hand_shards / "train"), label_keys=("cls",)).classes == list(GESTURE_NAMES)


TINY_MODEL = ["--model.init_args.backbone.init_args.img_size=32", "--model.init_args.backbone.init_args.embed_dim=32",
              "--model.init_args.backbone.init_args.depth=2", "--model.init_args.backbone.init_args.num_heads=2",
              "--model.init_args.backbone.init_args.decoder_embed_dim=32",
              "--model.init_args.backbone.init_args.decoder_depth=1",
              "--model.init_args.backbone.init_args.decoder_num_heads=2"]
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.devices=1", "--trainer.strategy=auto"]


def data_args(shards: Path, image_size: int) -> list[str]:
    return [f"--data.train_shards={shards / 'train'}", f"--data.val_shards={shards / 'val'}",
            f"--data.image_size={image_size}", "--data.batch_size=4", "--data.num_workers=0",
            "--data.shuffle_buffer=8", "--data.epoch_samples=8"]


def pretrain_checkpoint(path: Path, **backbone_sizes) -> None:
    """A real pretraining Lightning checkpoint, as `make pretrain` leaves one."""
    trainer = Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(PretrainModule(CroCoNet(**backbone_sizes), CompletionHead()))
    trainer.save_checkpoint(path)


def fit_cpu_config_from_the_demo(config: str, arguments: list[str], caplog: pytest.LogCaptureFixture) -> dict:
    """Two steps of ``configs/finetune/<config>.yaml`` in the current folder, from the checkpoint it names, written
    here at the `make pretrain` model's sizes; returns the run's last checkpoint."""
    pretrain_checkpoint(Path("runs/pretrain_cpu_demo/checkpoints/last.ckpt"), img_size=128, embed_dim=192,
                        depth=6, num_heads=3, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    with caplog.at_level(logging.INFO):
        main(["fit", "-c", str(REPO / f"configs/finetune/{config}.yaml"), *arguments, "--trainer.max_steps=2", *ON_CPU])
    assert "Loaded the pretrained encoder from runs/pretrain_cpu_demo/checkpoints/last.ckpt" in caplog.text
    return torch.load(f"runs/{config}/checkpoints/last.ckpt", map_location="cpu", weights_only=True)


def test_cpu_config_fine_tunes_the_pretrained_demo_encoder(hand_shards, tmp_path, monkeypatch, capsys, caplog):
    """gesture_cpu.yaml at its own model size, from the checkpoint path it names."""
    monkeypatch.chdir(tmp_path)
    checkpoint = fit_cpu_config_from_the_demo("gesture_cpu", data_args(hand_shards, 64), caplog)
    run = tmp_path / "runs/gesture_cpu"
    assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["class_names"] == list(GESTURE_NAMES)
    assert [p.name for p in (run / "pictures").glob("val_confusion_*.png")] == ["val_confusion_step0000002.png"]
    assert "crocoman: finished 2 steps" in capsys.readouterr().out


def test_gpu_config_runs_on_cpu_at_tiny_size_and_tests_its_checkpoint(hand_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = ["-c", str(REPO / "configs/finetune/gesture.yaml"), *TINY_MODEL, *data_args(hand_shards, 32),
                 "--model.init_args.pretrained=null", *ON_CPU]
    main(["fit", *arguments, "--trainer.max_steps=2"])
    run = tmp_path / "runs/gesture_vitb"
    # The CLI restores the model's hyper-parameters (class names included) from the checkpoint.
    main(["test", *arguments, f"--ckpt_path={run / 'checkpoints/last.ckpt'}"])
    assert list((run / "pictures").glob("test_confusion_*.png"))


def test_confusion_picture_labels_row_i_with_class_i():
    confusion, names = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 1]]), ["zebra", "apple", "mango"]
    picture = confusion_picture(confusion, names)
    cell_px = 28  # row i of the matrix is drawn at [cell_px * (i + 1), cell_px * (i + 2))
    for i in range(3):
        renamed = confusion_picture(confusion, [name.upper() if j == i else name for j, name in enumerate(names)])
        assert picture.shape == renamed.shape  # a name of the same length: the same layout
        changed_rows = (picture != renamed).any(dim=0).any(dim=1).nonzero().flatten()
        assert len(changed_rows) and (i + 1) * cell_px <= changed_rows.min() and changed_rows.max() < (i + 2) * cell_px


CLASS_NAMES = ["zebra", "apple", "mango"]  # labels 0, 1, 2: unsorted, so any reordering shows


@pytest.fixture(scope="module")
def confusion_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """gesture.yaml (tiny, on CPU) for 2 steps and one validation on toy shards whose manifest names the classes
    CLASS_NAMES; what `confusion_picture` was asked to draw is recorded."""
    root = tmp_path_factory.mktemp("confusion")
    shards = write_toy_shards(root / "toy", train=16, val=7)  # validation labels 0, 1, 2, 0, 1, 2, 0
    (shards / "manifest.json").write_text(json.dumps({"classes": CLASS_NAMES}))
    drawn = []

    def recording_picture(confusion, class_names, **kwargs):
        drawn.append((confusion.clone(), list(class_names)))
        return confusion_picture(confusion, class_names, **kwargs)

    import wandb

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lightning_modules.gesture.confusion_picture", recording_picture)
        patch.chdir(root)
        main(["fit", "-c", str(REPO / "configs/finetune/gesture.yaml"), *TINY_MODEL, *data_args(shards, 32),
              "--model.init_args.pretrained=null", *ON_CPU, "--trainer.max_steps=2"])
        wandb_files = Path(wandb.run.dir).resolve()  # relative to the run's working directory
        wandb.finish()
    return {"run": root / "runs/gesture_vitb", "drawn": drawn, "wandb_files": wandb_files}


def saved_picture(confusion_run: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The PNG the run wrote, and the picture of the recorded matrix with CLASS_NAMES, as save_image rounds it."""
    ((confusion, _),) = confusion_run["drawn"]
    expected = (confusion_picture(confusion, CLASS_NAMES) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    path = confusion_run["run"] / "pictures/val_confusion_step0000002.png"
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1), expected


def test_the_logged_confusion_matrix_carries_the_manifests_class_names(confusion_run):
    """Class names come from manifest.json, in its order, are stored in the checkpoint, and the picture logged
    at validation is drawn with them, row i for class i."""
    checkpoint = torch.load(confusion_run["run"] / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == CLASS_NAMES
    ((confusion, class_names),) = confusion_run["drawn"]  # one validation (the sanity check draws nothing)
    assert class_names == CLASS_NAMES and confusion.sum(dim=1).tolist() == [3, 2, 2]  # rows: true classes in order
    saved, expected = saved_picture(confusion_run)
    assert torch.equal(saved, expected)
    assert not torch.equal(confusion_picture(confusion, CLASS_NAMES), confusion_picture(confusion, CLASS_NAMES[::-1]))


def test_the_confusion_picture_in_wandb_is_the_saved_one(confusion_run):
    (uploaded,) = (confusion_run["wandb_files"] / "media/images/val").glob("confusion_*.png")
    in_wandb = torch.from_numpy(np.asarray(Image.open(uploaded).convert("RGB"))).permute(2, 0, 1)
    saved, _ = saved_picture(confusion_run)
    assert (in_wandb.int() - saved.int()).abs().max() <= 1


def test_short_fit_learns_a_separable_toy_set(toy_shards, tmp_path, one_torch_thread):
    seed_everything(0)
    backbone = CroCoNet(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
                        decoder_depth=1, decoder_num_heads=2)
    module = GestureModule(backbone, ClassificationHead(), lr=2e-2, weight_decay=0.0, warmup_steps=5)
    data = LabelledDataModule(str(toy_shards / "train"), val_shards=str(toy_shards / "val"), label_keys=("cls",),
                              batch_size=16, num_workers=0, image_size=32, epoch_samples=16 * 150, shuffle_buffer=32,
                              crop_scale=(0.8, 1.0), color_jitter=0.1)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["val/top1"] > 0.7  # chance: 1/3; typically 0.9+ after these 150 steps
