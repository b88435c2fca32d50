"""Pictures for humans: reconstruction grids, written to disk and to whichever loggers are active."""

from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from heads.completion import patchify, unpatchify
from lightning_modules.losses import normalize_patches


def reconstruct_pixels(image1: Tensor, mask: Tensor, pred: Tensor, patch_size: int, norm_pix: bool = True) -> Tensor:
    """Image 1 with its hidden patches replaced by the prediction, in [0, 1] pixels.

    With norm_pix the prediction is mapped back to pixels with each target patch's mean and std
    (the network never predicts those, so this shows structure, not absolute colour).
    """
    target = patchify(image1.float(), patch_size)
    pred = pred.float()
    if norm_pix:
        _, mean, std = normalize_patches(target)
        pred = pred * std + mean
    merged = torch.where(mask.flatten(1)[..., None], pred, target)
    return unpatchify(merged, patch_size, mask.shape[1:]).clamp(0, 1)


def reconstruction_grid(image1: Tensor, image2: Tensor, mask: Tensor, pred: Tensor, patch_size: int,
                        norm_pix: bool = True, max_rows: int = 4) -> Tensor:
    """One row per pair: image 1 with hidden patches grey | image 2 | reconstruction | target."""
    image1, image2, mask, pred = image1[:max_rows].float(), image2[:max_rows].float(), mask[:max_rows], pred[:max_rows]
    masked_input = torch.where(mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None],
                               0.5, image1)
    reconstruction = reconstruct_pixels(image1, mask, pred, patch_size, norm_pix)
    rows = torch.stack((masked_input, image2, reconstruction, image1), dim=1).flatten(0, 1)
    return make_grid(rows, nrow=4, padding=2, pad_value=1.0)


def picture_dir(trainer: Trainer) -> Path:
    """Where the run's pictures go: the logger's run folder, as ``trainer.log_dir`` would say.

    ``trainer.log_dir`` itself broadcasts between ranks, so calling it from rank zero alone (where
    pictures are written) would hang a DDP job; the loggers' own properties are local.
    """
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir) / "pictures"
    root = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
    return Path(root or trainer.default_root_dir) / "pictures"


def log_picture(trainer: Trainer, key: str, image: Tensor) -> Path:
    """Save ``image`` as PNG next to the run and send it to W&B / TensorBoard if they are active."""
    path = picture_dir(trainer) / f"{key.replace('/', '_')}_step{trainer.global_step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):  # uint8 as saved: wandb.Image casts floats to uint8 without scaling
            pixels = image.detach().mul(255).add(0.5).clamp(0, 255).to("cpu", torch.uint8)
            logger.log_image(key, [pixels], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, trainer.global_step)
    return path
