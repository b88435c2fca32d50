"""Dense per-pixel prediction from several encoder depths (DensePose): a DPT-style head.

A ViT keeps one token grid at the patch stride, and its last block has lost much of the fine
spatial detail that per-pixel labels need. DPT (Ranftl et al., 2021) taps blocks at several
depths, reassembles each into a map at its own stride (patch/4, patch/2, patch, 2 x patch: 4, 8,
16 and 32 px for patch 16), and fuses them top-down, coarse semantics first, finer maps adding
detail, before upsampling to full resolution. CroCo's downstream dense tasks use the same head.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from body.layouts import NUM_PARTS  # class 0 of the part logits is the background
from heads.base import Head



def evenly_spaced_layers(depth: int, count: int = 4) -> list[int]:
    """``count`` block indices spread over ``depth`` blocks, the last one included (DPT's 2, 5, 8, 11 for ViT-B);
    shallower encoders than ``count`` blocks repeat blocks rather than fail."""
    return [max(0, (i + 1) * depth // count - 1) for i in range(count)]


class ResidualConvUnit(nn.Module):
    """DPT's refinement unit: two 3x3 convolutions with pre-activation and a skip connection."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One top-down step: refine this level's map, add the coarser path upsampled to its size, refine again.

    Upsampling to the skip's exact size (not a fixed 2x) keeps odd patch grids working.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(features)
        self.unit = ResidualConvUnit(features)
        self.project = nn.Conv2d(features, features, 1)

    def forward(self, skip: Tensor, coarser: Tensor | None = None) -> Tensor:
        x = self.skip_unit(skip)
        if coarser is not None:
            x = x + F.interpolate(coarser, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(self.unit(x))


def reassemble(embed_dim: int, dim: int, features: int, level: int) -> nn.Sequential:
    """Tokens-as-map (stride = patch) -> map at stride patch * 2**(level - 2), ``features`` channels:
    1x1 projection, then transposed convolution (levels 0, 1), nothing (2) or a strided 3x3 conv (3)."""
    resample = {
        0: nn.ConvTranspose2d(dim, dim, 4, stride=4),
        1: nn.ConvTranspose2d(dim, dim, 2, stride=2),
        2: nn.Identity(),
        3: nn.Conv2d(dim, dim, 3, stride=2, padding=1),
    }[level]
    return nn.Sequential(nn.Conv2d(embed_dim, dim, 1), resample, nn.Conv2d(dim, features, 3, padding=1, bias=False))


class DenseHead(Head):
    """Encoder tokens of four depths -> full-resolution DensePose maps.

    Outputs ``part_logits`` (B, 25, H, W) (background + 24 parts) and per-part ``u``, ``v``
    (B, 24, H, W) in [0, 1] (sigmoid): every part predicts its own chart coordinates, and the
    loss and the reader take the channel of the part that is there.

    Args:
        features: width of the fusion path (DPT: 256); the main knob for a small head.
        layers: encoder block indices to tap, shallow to deep (negative count from the end);
            default: 4 evenly spaced, the last included. The task asks the backbone for these
            (``head.layers``).
        reassemble_dims: channels of the four reassembled maps before the fusion width; default
            embed_dim / 8, / 4, / 2, / 1 (DPT's 96, 192, 384, 768 for ViT-B).
        hidden: channels of the last convolution before the outputs (DPT: 32).
    """

    def __init__(self, features: int = 256, layers: Sequence[int] | None = None,
                 reassemble_dims: Sequence[int] | None = None, hidden: int = 32) -> None:
        super().__init__()
        if layers is not None and len(layers) != 4:
            raise ValueError(f"DenseHead fuses 4 encoder depths (strides patch/4 .. 2 x patch), got layers={layers}")
        if reassemble_dims is not None and len(reassemble_dims) != 4:
            raise ValueError(f"DenseHead needs 4 reassemble_dims, got {reassemble_dims}")
        self.features = features
        self.layers = list(layers) if layers is not None else None
        self.reassemble_dims = list(reassemble_dims) if reassemble_dims is not None else None
        self.hidden = hidden

    def bind(self, backbone: nn.Module) -> None:
        depth, embed_dim = backbone.depth, backbone.embed_dim
        if self.layers is None:
            self.layers = evenly_spaced_layers(depth)
        outside = [i for i in self.layers if not -depth <= i < depth]
        if outside:
            raise ValueError(f"DenseHead layers {self.layers}: {outside} outside the encoder's {depth} blocks; "
                             f"use indices in [{-depth}, {depth - 1}] or leave layers unset")
        dims = self.reassemble_dims or [max(1, embed_dim // 2 ** (3 - level)) for level in range(4)]
        self.patch_size = backbone.patch_size
        self.reassemble = nn.ModuleList(reassemble(embed_dim, dim, self.features, level)
                                        for level, dim in enumerate(dims))
        self.fusion = nn.ModuleList(FusionBlock(self.features) for _ in range(4))
        self.neck = nn.Conv2d(self.features, self.features // 2, 3, padding=1)
        self.output = nn.Sequential(nn.Conv2d(self.features // 2, self.hidden, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(self.hidden, self.output_channels, 1))

    @property
    def output_channels(self) -> int:
        return 1 + 3 * NUM_PARTS

    def fuse(self, features: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """``features``: the backbone's (B, rows*cols, D) tokens at ``self.layers``; ``grid``: (rows, cols)
        -> (B, features // 2, 4 rows, 4 cols): the fused map at the finest stride (patch / 4)."""
        maps = [layer(tokens.transpose(1, 2).unflatten(2, grid))
                for layer, tokens in zip(self.reassemble, features, strict=True)]
        path = None
        for fuse, level_map in zip(reversed(self.fusion), reversed(maps)):
            path = fuse(level_map, path)
        return self.neck(path)

    def run(self, backbone: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The head's output for (B, 3, H, W) ``images``, from the backbone's tokens at ``self.layers``."""
        return self(backbone.features(images, self.layers), backbone.image_grid(images))

    def forward(self, features: list[Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
        """``features``: the backbone's (B, rows*cols, D) tokens at ``self.layers``; ``grid``: (rows, cols)."""
        size = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        x = F.interpolate(self.fuse(features, grid), size=size, mode="bilinear", align_corners=True)
        part_logits, u, v = self.output(x).split([1 + NUM_PARTS, NUM_PARTS, NUM_PARTS], dim=1)
        return {"part_logits": part_logits, "u": torch.sigmoid(u), "v": torch.sigmoid(v)}
