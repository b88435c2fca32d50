"""Prediction writers for ``crocoman predict``: one set of files per input image.

Each rank writes the images it predicted, so a multi-GPU predict needs no gathering; file names
come from the sample keys (the image's path below its folder, ``_<i>`` added for the i-th boxed
person of a photo; or the shard sample key). Files that could not be read are listed at the end.
"""

import json
from pathlib import Path

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torchvision.utils import save_image

from datamodules.images import read_photo
from lightning_modules.densepose import densepose_picture
from lightning_modules.mesh_render import from_pil, overlay_mesh


class FilesPerImage(BasePredictionWriter):
    """Base of the writers: files named by sample key in ``output_dir``, written batch by batch.

    Args:
        output_dir: where the files go (created).
    """

    what = "predictions"

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.skipped: list[str] = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: dict, batch_indices,
                           batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        valid = batch.get("valid")
        for i, key in enumerate(prediction["key"]):
            if valid is None or bool(valid[i]):
                self.write(key, i, prediction, batch)
        for photo, (path, error) in enumerate(zip(batch.get("path", ()), batch.get("error", ()))):
            if error:
                self.skipped.append(f"{path}: {error}")
            elif batch["boxed"][photo]:
                self.write_photo(photo, prediction, batch)

    def path(self, key: str, suffix: str) -> Path:
        """``output_dir/<key><suffix>``, its folder created (keys of images in subfolders hold their path)."""
        path = self.output_dir / f"{key}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, key: str, index: int, prediction: dict, batch: dict) -> None:
        """Write the files of input ``index`` of the batch's ``prediction``."""
        raise NotImplementedError

    def write_photo(self, photo: int, prediction: dict, batch: dict) -> None:
        """Write what belongs to a whole photo with person boxes (its inputs are the people); nothing by default."""

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"crocoman predict: {self.what} -> {self.output_dir}")
        if self.skipped:
            listing = "\n".join(f"  {line}" for line in self.skipped)
            print(f"crocoman predict (rank {trainer.global_rank}): skipped {len(self.skipped)} image(s):\n{listing}")


class MeshPredictionWriter(FilesPerImage):
    """Writes ``<key>.png`` (the mesh over the network input), ``<key>.npz`` (camera-frame
    vertices and joints, projected keypoints, intrinsics, translation and, for parametric heads,
    axis-angle parameters) and ``<key>.json`` (the parameters and keypoints, human-readable). For a
    photo with person boxes each person is such a key, their vertices share the photo's camera
    (``photo_K`` and the input's square ``box`` in photo pixels are stored too), and ``<photo key>.png``
    shows every person's mesh over the photo, scaled to at most ``overlay_size`` pixels a side.

    Args:
        output_dir: where the files go (created).
        overlay_size: longer side of the whole-photo overlays.
    """

    ARRAYS = ("vertices", "joints", "keypoints_2d", "K", "translation", "global_orient", "body_pose", "hand_pose",
              "betas")
    PARAMETERS = ("translation", "global_orient", "body_pose", "hand_pose", "betas", "keypoints_2d")
    what = "meshes, parameters and overlays"

    def __init__(self, output_dir: str, overlay_size: int = 1280) -> None:
        super().__init__(output_dir)
        self.overlay_size = overlay_size

    def write(self, key: str, index: int, prediction: dict, batch: dict) -> None:
        arrays = {name: prediction[name][index].detach().float().cpu() for name in self.ARRAYS if name in prediction}
        if "photo" in batch and batch["boxed"][int(batch["photo"][index])]:
            arrays |= {"photo_K": batch["photo_K"][int(batch["photo"][index])].float().cpu(),
                       "box": batch["box"][index].float().cpu()}
        overlay = overlay_mesh(prediction["image"][index], arrays["vertices"], prediction["faces"], arrays["K"])
        save_image(overlay, self.path(key, ".png"))
        np.savez_compressed(self.path(key, ".npz"), faces=prediction["faces"].cpu().numpy(),
                            **{name: value.numpy() for name, value in arrays.items()})
        record = {name: arrays[name].tolist() for name in (*self.PARAMETERS, "box") if name in arrays}
        self.path(key, ".json").write_text(json.dumps({"key": key, **record}) + "\n")

    def write_photo(self, photo: int, prediction: dict, batch: dict) -> None:
        people = [i for i in range(len(prediction["key"])) if int(batch["photo"][i]) == photo and bool(batch["valid"][i])]
        width, height = batch["photo_size"][photo].tolist()
        shrink = min(1.0, self.overlay_size / max(width, height))
        image, _, _ = read_photo(Path(batch["path"][photo]), self.overlay_size)
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        image = image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image
        # Photo pixels -> overlay pixels (pixel centres at integers), per axis.
        sx, sy = size[0] / width, size[1] / height
        to_overlay = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        K = to_overlay @ batch["photo_K"][photo].float().cpu()
        faces = prediction["faces"].cpu()
        vertices = torch.cat([prediction["vertices"][i].detach().float().cpu() for i in people])
        all_faces = torch.cat([faces + n * prediction["vertices"].shape[1] for n in range(len(people))])
        save_image(overlay_mesh(from_pil(image), vertices, all_faces, K), self.path(batch["photo_key"][photo], ".png"))


class DensePosePredictionWriter(FilesPerImage):
    """Writes ``<key>.png`` (image | parts | U | V over it) and ``<key>.iuv.png`` (part id, U, V
    x 255: the layout of our shards' ``iuv.png``, so predictions can serve as pseudo-labels).
    """

    what = "DensePose maps"

    def write(self, key: str, index: int, prediction: dict, batch: dict) -> None:
        one = slice(index, index + 1)
        uv = torch.stack([prediction["u"][one], prediction["v"][one]], dim=1)
        save_image(densepose_picture(prediction["image"][one], prediction["parts"][one], uv), self.path(key, ".png"))
        iuv = prediction["iuv"][index].permute(1, 2, 0).cpu().numpy()
        Image.fromarray(iuv).save(self.path(key, ".iuv.png"))
