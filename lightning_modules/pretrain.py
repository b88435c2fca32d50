"""Cross-view / cross-pose completion pretraining (CroCo-Man)."""

import torch
from torch import Tensor

from backbone.masking import RandomMasking
from heads.completion import patchify
from lightning_modules.base import CrocoTask, StepOutput
from lightning_modules.losses import masked_patch_mse, sum_by_pair_type
from lightning_modules.visualize import reconstruct_pixels, reconstruction_grid

PAIR_TYPES = ("cross_view", "cross_pose", "single_image")  # indexed by the batches' pair_type


class PretrainModule(CrocoTask):
    """Reconstruct the hidden patches of image 1 from its visible patches and image 2.

    Batches carry ``image1``, ``image2`` (B, 3, H, W) in [0, 1], ``pair_type`` (index into
    ``PAIR_TYPES``) and, for human masking, ``person1`` (B, H, W). The loss is logged per pair
    type (``loss/cross_view``, ``loss/cross_pose``; ``loss/single_image`` for the MAE baseline of
    ``PairDataModule(single_image=True)``) and their sum as ``loss``.

    Args:
        masking: which patches to hide (``backbone.RandomMasking`` or ``backbone.HumanMasking``);
            default: 90% uniformly at random, as in CroCo.
        norm_pix: regress per-patch normalised pixels (CroCo's target) rather than raw pixels.
        picture_every_n_steps: how often a reconstruction grid is written and logged.
        **kwargs: backbone, head, optimiser and pretrained-weight arguments of ``CrocoTask``.
    """

    def __init__(self, *args, masking: RandomMasking | None = None, norm_pix: bool = True,
                 picture_every_n_steps: int = 500, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.masking = masking or RandomMasking(0.9)
        self.norm_pix = norm_pix
        self.picture_every_n_steps = picture_every_n_steps

    def forward(self, image1: Tensor, image2: Tensor, mask1: Tensor, num_visible: int | None = None) -> Tensor:
        """Predicted patches of image 1, (B, N, patch_size**2 * 3), for a given mask (and its number of
        visible patches per image, if known: see ``CroCoNet.encode``)."""
        tokens1, pos1 = self.backbone.encode(image1, mask1, num_visible)
        tokens2, pos2 = self.backbone.encode(image2)
        return self.head(self.backbone.decode(tokens1, pos1, tokens2, pos2, mask1))

    def complete(self, batch: dict[str, Tensor],
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Mask image 1 (drawing from ``generator``, default the global one), predict its patches;
        returns the mask, the prediction and the loss terms."""
        image1 = batch["image1"]
        grid = self.backbone.image_grid(image1)
        mask = self.masking(image1.shape[0], grid, batch.get("person1"), image1.device, generator)
        pred = self(image1, batch["image2"], mask, grid[0] * grid[1] - self.masking.num_masked(grid))
        per_sample = masked_patch_mse(pred, patchify(image1, self.backbone.patch_size), mask.flatten(1), self.norm_pix)
        return mask, pred, sum_by_pair_type(per_sample, batch["pair_type"], PAIR_TYPES)

    def forward_batch(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> StepOutput:
        """Training masks from the global generator, evaluation ones from ``eval_generator``."""
        generator = None if stage == "train" else self.eval_generator(batch_idx, batch["image1"].device)
        mask, pred, terms = self.complete(batch, generator)
        return StepOutput(sum(terms.values()), terms, (mask, pred))

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        return len(batch["image1"])

    def picture_due(self, stage: str, batch_idx: int) -> bool:
        """Every ``picture_every_n_steps`` training steps, and the first validation batch."""
        if stage == "train":
            return self.global_step % self.picture_every_n_steps == 0
        return super().picture_due(stage, batch_idx)

    def pictures(self, batch: dict[str, Tensor], outputs: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        mask, pred = outputs
        grid = reconstruction_grid(batch["image1"], batch["image2"], mask, pred.detach(), self.backbone.patch_size,
                                   self.norm_pix)
        return {f"{stage}/reconstruction": grid.cpu()}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Image 1 completed (hidden patches predicted, visible ones copied), with its mask."""
        mask, pred, _ = self.complete(batch, self.eval_generator(batch_idx, batch["image1"].device))
        return {"reconstruction": reconstruct_pixels(batch["image1"], mask, pred, self.backbone.patch_size,
                                                     self.norm_pix), "mask": mask}
