"""Pixel head for completion pretraining, the patch <-> image layout it predicts in, and the network of a
CroCo release file (backbone and this head)."""

import os

from einops import rearrange
from torch import Tensor, nn

from backbone.croco import CroCoNet
from backbone.weights import KeyReport, croco_kwargs_to_ours, load_croco, read_checkpoint
from heads.base import Head


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, 3, H, W) -> (B, N, patch_size**2 * 3), the layout of CroCo's prediction head."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int]) -> Tensor:
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], w=grid[1], p=patch_size, q=patch_size)


class CompletionHead(Head):
    """Linear map from decoder tokens to the pixels of their 16x16x3 patch (CroCo's ``prediction_head``)."""

    def bind(self, backbone: nn.Module) -> None:
        self.patch_size = backbone.patch_size
        self.proj = nn.Linear(backbone.decoder_embed_dim, backbone.patch_size**2 * 3)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, decoder_tokens: Tensor) -> Tensor:
        return self.proj(decoder_tokens)


def build_from_croco(path: str | os.PathLike) -> tuple[CroCoNet, CompletionHead, KeyReport]:
    """The network a CroCo file describes (its ``croco_kwargs``, or v1 defaults), strictly loaded."""
    checkpoint = read_checkpoint(path)
    backbone = CroCoNet(**croco_kwargs_to_ours(checkpoint.get("croco_kwargs", {})))
    head = CompletionHead()
    head.bind(backbone)
    return backbone, head, load_croco(checkpoint, backbone, head, strict=True)
