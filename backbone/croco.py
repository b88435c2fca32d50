"""The CroCo network: one ViT encoder shared by both images and a cross-attention decoder.

Image 1 is masked; its visible tokens and the tokens of image 2 are encoded by the same encoder;
the decoder fills the masked positions with a learned mask token and reconstructs image 1 by
attending to itself and to image 2. Downstream tasks use the encoder alone (``encode``,
``features``). Module names match naver/croco so public checkpoints load as they are.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed
from torch import Tensor, nn

from backbone.blocks import DecoderBlock, EncoderBlock
from backbone.rope import RoPE2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed sine-cosine embedding of CroCo v1 / MAE: first half encodes the column, second the row."""

    def one_axis(d: int, coords: Tensor) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        angles = coords.flatten().double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.cat((one_axis(dim // 2, cols), one_axis(dim // 2, rows)), dim=1).float()[None]


class CroCoNet(nn.Module):
    """ViT encoder with 2D RoPE plus the CroCo cross-attention decoder.

    Attributes read by heads: ``patch_size``, ``patch_grid`` (rows, cols at ``img_size``),
    ``embed_dim``, ``depth``, ``decoder_embed_dim``. ``architecture``: the constructor arguments
    (all but ``drop_path_rate``, a training choice), which checkpoints record so that a fine-tuning
    config can leave them out.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        pos_embed: Literal["RoPE100", "cosine"] | str = "RoPE100",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.architecture = {"img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
                             "num_heads": num_heads, "decoder_embed_dim": decoder_embed_dim,
                             "decoder_depth": decoder_depth, "decoder_num_heads": decoder_num_heads,
                             "mlp_ratio": mlp_ratio, "pos_embed": pos_embed, "norm_eps": norm_eps}
        self.patch_size = patch_size
        self.patch_grid = (img_size // patch_size, img_size // patch_size)
        self.embed_dim = embed_dim
        self.depth = depth
        self.decoder_embed_dim = decoder_embed_dim
        self.pos_embed = pos_embed

        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, strict_img_size=False)
        self.enc_rope = self.dec_rope = None
        if pos_embed == "cosine":
            self.register_buffer("enc_pos_embed", sincos_pos_embed_2d(embed_dim, self.patch_grid))
            self.register_buffer("dec_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.patch_grid))
        elif pos_embed.startswith("RoPE"):
            base = float(pos_embed[len("RoPE"):])
            self.enc_rope = RoPE2D(embed_dim // num_heads, base=base)
            self.dec_rope = RoPE2D(decoder_embed_dim // decoder_num_heads, base=base)
        else:
            raise ValueError(f"pos_embed must be 'cosine' or 'RoPE<base>' (e.g. 'RoPE100'), got {pos_embed!r}")
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        enc_dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, drop_path=dpr, norm_eps=norm_eps)
            for dpr in enc_dpr
        )
        self.enc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_eps=norm_eps)
            for _ in range(decoder_depth)
        )
        self.dec_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        """CroCo/MAE init: xavier on linear layers and the patch projection, small normal mask token."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def transformer_blocks(self) -> list[nn.Module]:
        """The units to compile, shard (FSDP) or checkpoint one at a time."""
        return [*self.enc_blocks, *self.dec_blocks]

    def compile(self, **kwargs) -> None:
        """Compile each transformer block: the hot path, reached through ``encode``/``decode``, not ``forward``."""
        for block in self.transformer_blocks():
            block.compile(**kwargs)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for timm's layer-wise LR decay: stem first, then one group per encoder block."""
        return {"stem": r"^patch_embed", "blocks": [(r"^enc_blocks\.(\d+)", None), (r"^enc_norm", (99999,))]}

    def grid_positions(self, batch_size: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        """(row, column) index of every patch, row-major: (B, rows*cols, 2)."""
        rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                    indexing="ij")
        return torch.stack((rows.flatten(), cols.flatten()), dim=-1).expand(batch_size, -1, -1)

    def image_grid(self, images: Tensor) -> tuple[int, int]:
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        return H // self.patch_size, W // self.patch_size

    def _embed(self, images: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patch tokens of images in [0, 1] and their (row, column) positions; with ``keep`` (B, V, 1)
        patch indices, only those patches, in that order.

        The patch projection runs as one matrix product on the patches' pixels (the convolution's
        weights, flattened), and only on the kept patches: at mask ratio 0.9 that skips nine tenths of
        image 1's projection, and on GPUs it avoids the convolution's layout conversions.
        """
        grid = self.image_grid(images)
        pixels = rearrange((images - self.pixel_mean) / self.pixel_std, "b c (h p) (w q) -> b (h w) (c p q)",
                           p=self.patch_size, q=self.patch_size)
        positions = self.grid_positions(images.shape[0], grid, images.device)
        pos_embed = None
        if self.pos_embed == "cosine":
            if grid != self.patch_grid:
                raise ValueError(f"cosine position embedding is fixed to grid {self.patch_grid}, got {grid}")
            pos_embed = self.enc_pos_embed.expand(images.shape[0], -1, -1)
        if keep is not None:
            def kept(per_patch: Tensor) -> Tensor:
                return per_patch.gather(1, keep.expand(-1, -1, per_patch.shape[-1]))

            pixels, positions = kept(pixels), kept(positions)
            pos_embed = None if pos_embed is None else kept(pos_embed)
        proj = self.patch_embed.proj
        x = F.linear(pixels, proj.weight.flatten(1), proj.bias)
        return (x if pos_embed is None else x + pos_embed), positions

    @staticmethod
    def _rope_tables(rope: RoPE2D | None, positions: Tensor) -> Tensor | None:
        return None if rope is None else rope.tables(positions)

    def encode(self, images: Tensor, mask: Tensor | None = None,
               num_visible: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode images in [0, 1] (ImageNet normalisation happens here).

        ``mask`` (B, rows, cols) bool, True = hidden, must hide the same number of patches in every
        image; only the visible tokens are encoded and returned, with their (row, col) positions,
        row-major. ``num_visible``: that number of visible patches, when the caller knows it
        (``masking.num_masked``); without it, it is read off the mask, which costs a device-to-host
        copy per call on a GPU (as boolean indexing would, which also breaks a compiled graph).
        """
        keep = None
        if mask is not None:
            hidden = mask.flatten(1)
            if num_visible is None:
                num_visible = hidden.shape[1] - int(hidden[0].sum())
            # A stable sort puts the visible patches (0) first, in grid order: the order decode() fills.
            keep = hidden.to(torch.uint8).argsort(dim=1, stable=True)[:, :num_visible, None]
        x, positions = self._embed(images, keep)
        rope = self._rope_tables(self.enc_rope, positions)
        for block in self.enc_blocks:
            x = block(x, rope)
        return self.enc_norm(x), positions

    def features(self, images: Tensor, layers: list[int]) -> list[Tensor]:
        """Tokens after the given encoder blocks (negative indices count from the end), for dense heads."""
        wanted = {i % self.depth for i in layers}
        x, positions = self._embed(images)
        rope = self._rope_tables(self.enc_rope, positions)
        outputs = {}
        for i, block in enumerate(self.enc_blocks):
            x = block(x, rope)
            if i in wanted:
                outputs[i] = self.enc_norm(x) if i == self.depth - 1 else x
        return [outputs[i % self.depth] for i in layers]

    def decode(self, tokens1: Tensor, pos1: Tensor, tokens2: Tensor, pos2: Tensor,
               mask1: Tensor | None = None) -> Tensor:
        """Decode image-1 tokens with cross-attention to image-2 tokens.

        With ``mask1`` (B, rows, cols) as given to ``encode``, ``tokens1``/``pos1`` are the visible
        tokens only: they are scattered back onto the full grid with mask tokens in the hidden
        places, so the output covers every patch of image 1 in row-major order.
        """
        x, memory = self.decoder_embed(tokens1), self.decoder_embed(tokens2)
        if mask1 is not None:
            B, rows, cols = mask1.shape
            full = self.mask_token.to(x.dtype).expand(B, rows * cols, -1)
            x = full.masked_scatter(~mask1.flatten(1)[..., None], x)
            pos1 = self.grid_positions(B, (rows, cols), x.device)
        if self.pos_embed == "cosine":
            x, memory = x + self.dec_pos_embed, memory + self.dec_pos_embed
        rope1, rope2 = self._rope_tables(self.dec_rope, pos1), self._rope_tables(self.dec_rope, pos2)
        for block in self.dec_blocks:
            x = block(x, memory, rope1, rope2)
        return self.dec_norm(x)


def croco_tiny(**kwargs) -> CroCoNet:
    """ViT-Ti/16 encoder (192 x 12), decoder 256 x 4: CPU demos and tests."""
    return CroCoNet(**{"embed_dim": 192, "depth": 12, "num_heads": 3, "decoder_embed_dim": 256,
                       "decoder_depth": 4, "decoder_num_heads": 8, **kwargs})


def croco_small(**kwargs) -> CroCoNet:
    """ViT-S/16 encoder (384 x 12), decoder 256 x 8."""
    return CroCoNet(**{"embed_dim": 384, "depth": 12, "num_heads": 6, "decoder_embed_dim": 256,
                       "decoder_depth": 8, "decoder_num_heads": 8, **kwargs})


def croco_base(**kwargs) -> CroCoNet:
    """ViT-B/16 encoder (768 x 12), decoder 512 x 8: the CroCo v2 / CroCo-Man setting."""
    return CroCoNet(**kwargs)


def croco_large(**kwargs) -> CroCoNet:
    """ViT-L/16 encoder (1024 x 24), decoder 512 x 8."""
    return CroCoNet(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})
