"""Which patches of image 1 the network must reconstruct.

Both generators hide an exact number of patches per image (so the encoder sees equal-length
sequences and the batch stays dense). ``HumanMasking`` is CroCo-Man's human-centric variant: the
hidden patches are drawn preferentially on the person, so the task is about completing the body
rather than the backdrop.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomMasking:
    """Hide ``ratio`` of the patches uniformly at random (CroCo: 0.9)."""

    def __init__(self, ratio: float = 0.9) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio

    def num_masked(self, grid: tuple[int, int]) -> int:
        return int(self.ratio * grid[0] * grid[1])

    def patch_weights(self, batch_size: int, grid: tuple[int, int], person: Tensor | None,
                      device: torch.device) -> Tensor:
        """Relative chance of each patch to be hidden; uniform here."""
        return torch.ones(batch_size, grid[0] * grid[1], device=device)

    def __call__(self, batch_size: int, grid: tuple[int, int], person: Tensor | None = None,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """Return a (B, rows, cols) bool mask, True = hidden, drawn from ``generator`` (default: the global one).

        Weighted sampling without replacement via the Gumbel-top-k trick: the k largest
        ``log(w) + Gumbel`` keys are an exact draw of k patches proportionally to w.
        """
        weights = self.patch_weights(batch_size, grid, person, torch.device(device))
        uniform = torch.rand(weights.shape, generator=generator, device=weights.device)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-12)))
        hidden = (weights.log() + gumbel).topk(self.num_masked(grid), dim=1).indices
        mask = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, hidden, True)
        return mask.view(batch_size, *grid)


class HumanMasking(RandomMasking):
    """Hide ``ratio`` of the patches, favouring patches covered by the person.

    ``person`` is a (B, H, W) mask in [0, 1] (the silhouette, or the filled bounding box when a
    dataset has no silhouettes); a patch's weight is ``1 + person_weight * coverage``, so with
    the default a fully covered patch is 20 times likelier to be hidden than background.
    """

    def __init__(self, ratio: float = 0.9, person_weight: float = 19.0) -> None:
        super().__init__(ratio)
        self.person_weight = person_weight

    def patch_weights(self, batch_size: int, grid: tuple[int, int], person: Tensor | None,
                      device: torch.device) -> Tensor:
        if person is None:
            raise ValueError("HumanMasking needs the batch's person masks ('person1'); "
                             "use RandomMasking for data without silhouettes or boxes")
        coverage = F.adaptive_avg_pool2d(person.float()[:, None], grid).flatten(1).to(device)
        return 1.0 + self.person_weight * coverage
