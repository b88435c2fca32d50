"""Plain image files for ``crocoman predict``: a fine-tuned model run on a folder of person crops."""

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.base import ShardDataModule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(paths: str | list[str]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the named folders."""
    files: list[Path] = []
    for entry in [paths] if isinstance(paths, str) else paths:
        path = Path(entry)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no image file or folder at {path} (from {Path.cwd()})")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {paths}")
    return files


class SquareImages(Dataset):
    """Each image padded to a square around its centre (nothing is cut off) and resized.

    Without calibration the crop gets a pinhole camera with focal length ``focal_ratio`` x the
    side and the principal point at the centre; for a tight person crop the exact value matters
    little, since the predicted depth absorbs it.
    """

    def __init__(self, files: list[Path], image_size: int, focal_ratio: float) -> None:
        self.files, self.image_size, self.focal_ratio = files, image_size, focal_ratio

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            image = v2.functional.pil_to_tensor(Image.open(path).convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        height, width = image.shape[-2:]
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        image = v2.functional.pad(image, [left, top, side - width - left, side - height - top])
        image = v2.functional.resize(image, [self.image_size, self.image_size], antialias=True)
        focal, centre = self.focal_ratio * self.image_size, (self.image_size - 1) / 2
        K = torch.tensor([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])
        return {"image": v2.functional.to_dtype(image, torch.float32, scale=True), "K": K,
                "key": path.stem, "path": str(path)}


class ImageFolderDataModule(ShardDataModule):
    """Images to predict on (``crocoman predict``); it has no training or validation data.

    Args:
        paths: image files and/or folders (searched recursively).
        image_size: side of the square network input (the model's training size).
        batch_size: images per step.
        num_workers: loader processes.
        focal_ratio: assumed focal length as a fraction of the image side (see ``SquareImages``).
    """

    def __init__(self, paths: str | list[str], image_size: int = 224, batch_size: int = 16, num_workers: int = 2,
                 focal_ratio: float = 1.0) -> None:
        super().__init__(batch_size)
        self.save_hyperparameters()

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = SquareImages(image_files(hp.paths), hp.image_size, hp.focal_ratio)
        return DataLoader(dataset, batch_size=hp.batch_size, num_workers=hp.num_workers)

    def train_dataloader(self) -> DataLoader:
        raise RuntimeError("ImageFolderDataModule only serves `crocoman predict`; train on shards (MeshDataModule)")

    def val_dataloader(self) -> list:
        return []

    def test_dataloader(self) -> list:
        return []
