"""README promises of pretraining runs: what a reconstruction picture shows, swapping the masking from the command
line, and validation masks that come from generators of their own."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from PIL import Image

from backbone import HumanMasking, RandomMasking
from heads.completion import patchify
from lightning_modules.losses import normalize_patches
from lightning_modules.visualize import reconstruction_grid
from tests.conftest import REPO
from tests.test_cli import TINY_MODEL, data_args
from crocoman.main import build, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH = 16
GREY = 128  # 0.5 as the saved PNG holds it


class FirstBatch(Callback):
    """Saves the first training batch's images as the step sees them (float, on the device) and the module's
    masking to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 0:
            masking = pl_module.masking
            torch.save({"image1": batch["image1"].cpu(), "image2": batch["image2"].cpu(),
                        "masking": type(masking).__name__, "ratio": masking.ratio}, self.out)


class Losses(Callback):
    """Appends each training step's loss and each validation's ``val/loss`` (sanity check excluded) to ``out``
    (JSON lines)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def _write(self, record: dict) -> None:
        with Path(self.out).open("a") as file:
            file.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._write({"step": trainer.global_step, "loss": float(outputs["loss"])})

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write({"val_step": trainer.global_step, "val_loss": float(trainer.callback_metrics["val/loss"])})


def cell(grid: np.ndarray, row: int, column: int, size: int) -> np.ndarray:
    """The (size, size, C) picture at ``row``, ``column`` of a ``make_grid`` (2 px padding) held as (H, W, C)."""
    top, left = 2 + row * (size + 2), 2 + column * (size + 2)
    return grid[top:top + size, left:left + size]


def patches(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (rows, cols, PATCH, PATCH, C)."""
    height, width, channels = image.shape
    return image.reshape(height // PATCH, PATCH, width // PATCH, PATCH, channels).swapaxes(1, 2)


def test_reconstruction_grid_rows_are_hidden_input_image2_reconstruction_target():
    """One row per pair: image 1 with its hidden patches grey, image 2, the reconstruction (visible patches copied,
    hidden ones predicted, mapped back to pixels with each target patch's statistics under norm_pix), the target."""
    generator = torch.Generator().manual_seed(0)
    image1, image2, other = (torch.rand(3, 3, 32, 32, generator=generator) for _ in range(3))
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]],
                         [[True, True], [True, False]]])
    hidden = mask.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)[:, None]
    raw = reconstruction_grid(image1, image2, mask, patchify(other, PATCH), PATCH, norm_pix=False)
    # Under norm_pix the network predicts normalised patches: predicting image 1's own ones gives image 1 back.
    normalised = reconstruction_grid(image1, image2, mask, normalize_patches(patchify(image1, PATCH))[0], PATCH)
    assert raw.shape == normalised.shape == (3, 2 + 3 * 34, 2 + 4 * 34)
    masked_input = torch.where(hidden, 0.5, image1)
    for grid, reconstruction in ((raw, torch.where(hidden, other, image1)), (normalised, image1)):
        grid = grid.permute(1, 2, 0).numpy()
        for row in range(3):
            for column, expected in enumerate((masked_input, image2, reconstruction, image1)):
                np.testing.assert_allclose(cell(grid, row, column, 32), expected[row].permute(1, 2, 0).numpy(),
                                           atol=1e-5, err_msg=f"row {row}, column {column}")


@pytest.fixture(scope="module")
def swapped_masking_run(pair_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step of the CPU demo config with its HumanMasking(0.9) swapped for RandomMasking(0.5) on the command
    line, as the README writes it, writing the reconstruction picture of step 0."""
    workdir = tmp_path_factory.mktemp("swapped_masking")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
              "--model.masking", "backbone.RandomMasking", "--model.masking.ratio", "0.5",
              "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.limit_val_batches=0",
              "--model.init_args.picture_every_n_steps=1",
              "--trainer.callbacks+=tests.test_promises_pretraining.FirstBatch",
              f"--trainer.callbacks.out={workdir / 'batch.pt'}"])
    return workdir


def test_masking_is_swapped_from_the_command_line(swapped_masking_run: Path):
    recorded = torch.load(swapped_masking_run / "batch.pt", weights_only=True)
    assert recorded["masking"] == RandomMasking.__name__ != HumanMasking.__name__  # the config's is HumanMasking
    assert recorded["ratio"] == 0.5


def test_the_saved_reconstruction_picture_shows_the_batch(swapped_masking_run: Path):
    """The PNG a run writes, against the batch the step trained on: a row per pair; column 1 is image 1 where
    visible and grey on exactly the hidden half of its 4 x 4 patches (ratio 0.5), column 2 image 2, column 3
    image 1's visible patches copied, column 4 image 1."""
    batch = torch.load(swapped_masking_run / "batch.pt", weights_only=True)
    picture = np.asarray(Image.open(swapped_masking_run / "runs/pretrain_cpu_demo/pictures"
                                    / "train_reconstruction_step0000000.png").convert("RGB")).astype(int)
    assert picture.shape == (2 + 4 * 66, 2 + 4 * 66, 3)  # 4 pairs of 64 px images, 4 columns

    def pixels(images: torch.Tensor, row: int) -> np.ndarray:
        return (images[row].permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)

    for row in range(4):
        image1, image2 = pixels(batch["image1"], row), pixels(batch["image2"], row)
        masked_input, reconstruction = (patches(cell(picture, row, column, 64)) for column in (0, 2))
        grey = (masked_input == GREY).all(axis=(2, 3, 4))
        assert grey.sum() == 8, f"row {row}: {grey.sum()} grey patches"
        visible = ~grey
        assert np.abs(masked_input[visible] - patches(image1)[visible]).max() <= 1
        assert np.abs(reconstruction[visible] - patches(image1)[visible]).max() <= 1
        assert np.abs(cell(picture, row, 1, 64) - image2).max() <= 1
        assert np.abs(cell(picture, row, 3, 64) - image1).max() <= 1
        assert np.abs(image2 - image1).max() > 8  # swapped columns would be told apart: image 2 is another view


def test_validation_masks_repeat_and_leave_the_training_draws_alone(pair_shards: Path, tmp_path: Path, monkeypatch):
    """Two runs of 4 steps with the weights held (lr 0), one validating after every epoch (2 steps) and after the
    sanity check, one never: every validation gives the same loss (the same masks on the same weights), and the
    training losses are those of the run without validation (validation drew nothing from the training's
    generators)."""
    records = {}
    for name, validation in (("validating", []), ("not_validating", ["--trainer.limit_val_batches=0"])):
        workdir = tmp_path / name
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
              "--trainer.max_steps=4", "--trainer.logger=false", "--model.init_args.lr=0", *validation,
              "--trainer.callbacks+=tests.test_promises_pretraining.Losses",
              f"--trainer.callbacks.out={workdir / 'losses.jsonl'}"])
        records[name] = [json.loads(line) for line in (workdir / "losses.jsonl").read_text().splitlines()]
    train = {name: [r["loss"] for r in lines if "loss" in r] for name, lines in records.items()}
    validations = [r["val_loss"] for r in records["validating"] if "val_loss" in r]
    assert len(train["validating"]) == len(train["not_validating"]) == 4
    assert train["validating"] == train["not_validating"]
    assert len(validations) == 2 and validations[0] == validations[1]
    assert not [r for r in records["not_validating"] if "val_loss" in r]


def test_the_demo_config_is_the_model_and_budget_the_readme_describes():
    """The README's one-line description of `make pretrain`'s model against what its config builds."""
    described = re.search(r"`make pretrain` runs `(\S+)`: a (\d+)-block ViT \(width (\d+)\) on (\d+) px pairs"
                          r".*?\n(\d+) steps", (REPO / "README.md").read_text(), flags=re.DOTALL)
    assert described, "the README no longer describes the demo in the words this test reads"
    config, depth, width, size, steps = described.groups()
    with contextlib.redirect_stdout(io.StringIO()):
        built = build([REPO / config])
    backbone = built.model.backbone
    assert (len(backbone.enc_blocks), backbone.embed_dim) == (int(depth), int(width))
    assert built.datamodule.hparams.image_size == int(size) == backbone.architecture["img_size"]
    assert built.config.trainer.max_steps == int(steps)
