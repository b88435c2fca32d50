"""Prediction writers for ``crocoman predict``: one set of files per input image.

Each rank writes the images it predicted, so a multi-GPU predict needs no gathering; file names
come from the sample keys (the image file stem, or the shard sample key).
"""

import json
from pathlib import Path

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torchvision.utils import save_image

from lightning_modules.densepose import densepose_picture
from lightning_modules.mesh_render import overlay_mesh


class FilesPerImage(BasePredictionWriter):
    """Base of the writers: files named by sample key in ``output_dir``, written batch by batch.

    Args:
        output_dir: where the files go (created).
    """

    what = "predictions"

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: dict, batch_indices,
                           batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for i, key in enumerate(prediction["key"]):
            self.write(key, i, prediction)

    def write(self, key: str, index: int, prediction: dict) -> None:
        """Write the files of sample ``index`` of the batch's ``prediction``."""
        raise NotImplementedError

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"crocoman predict: {self.what} -> {self.output_dir}")


class MeshPredictionWriter(FilesPerImage):
    """Writes ``<key>.png`` (the mesh over the network input), ``<key>.npz`` (camera-frame
    vertices and joints, projected keypoints, intrinsics, translation and, for parametric heads,
    axis-angle parameters) and ``<key>.json`` (the parameters and keypoints, human-readable)."""

    ARRAYS = ("vertices", "joints", "keypoints_2d", "K", "translation", "global_orient", "body_pose", "hand_pose",
              "betas")
    PARAMETERS = ("translation", "global_orient", "body_pose", "hand_pose", "betas", "keypoints_2d")
    what = "meshes, parameters and overlays"

    def write(self, key: str, index: int, prediction: dict) -> None:
        arrays = {name: prediction[name][index].detach().float().cpu() for name in self.ARRAYS if name in prediction}
        overlay = overlay_mesh(prediction["image"][index], arrays["vertices"], prediction["faces"], arrays["K"])
        save_image(overlay, self.output_dir / f"{key}.png")
        np.savez_compressed(self.output_dir / f"{key}.npz", faces=prediction["faces"].cpu().numpy(),
                            **{name: value.numpy() for name, value in arrays.items()})
        record = {name: arrays[name].tolist() for name in self.PARAMETERS if name in arrays}
        (self.output_dir / f"{key}.json").write_text(json.dumps({"key": key, **record}) + "\n")


class DensePosePredictionWriter(FilesPerImage):
    """Writes ``<key>.png`` (image | parts | U | V over it) and ``<key>.iuv.png`` (part id, U, V
    x 255: the layout of our shards' ``iuv.png``, so predictions can serve as pseudo-labels).
    """

    what = "DensePose maps"

    def write(self, key: str, index: int, prediction: dict) -> None:
        one = slice(index, index + 1)
        uv = torch.stack([prediction["u"][one], prediction["v"][one]], dim=1)
        save_image(densepose_picture(prediction["image"][one], prediction["parts"][one], uv),
                   self.output_dir / f"{key}.png")
        iuv = prediction["iuv"][index].permute(1, 2, 0).cpu().numpy()
        Image.fromarray(iuv).save(self.output_dir / f"{key}.iuv.png")
