"""Analytic FLOPs of one CroCo completion-pretraining step, for model FLOPs utilisation (MFU).

Only matrix multiplications are counted (a multiply-add is 2 FLOPs); norms, RoPE, softmax,
masking and the loss are a rounding error next to them and are not what the tensor cores do.
With

    B  batch (pairs)            N   patches per image = (img / p)^2     P  = 3 p^2 values per patch
    V  visible patches of image 1 = N - int(mask_ratio * N)  (as ``RandomMasking.num_masked``)
    D, L, r    encoder width, depth, MLP ratio        d, l   decoder width, depth

one forward pass of a pair costs

    patch_embed     2 * (V + N) * P * D                image 2 in full, image 1's visible patches
                                                       only (hidden ones are never projected)
    encoder         L * [ (2V + 2N) * (4 + 2r) * D^2   qkv (3D^2) + proj (D^2) + MLP (2rD^2)
                        + 4 * (V^2 + N^2) * D ]        scores QK^T + weighted sum AV, per image
    decoder_embed   2 * (V + N) * D * d                both images' tokens to decoder width
    decoder         l * [ 2N * 4d^2 + 4 N^2 d          self-attention over all N image-1 tokens
                        + 2N * 4d^2 + 4 N^2 d          cross-attention: q, proj on image 1,
                                                       k, v on image 2; N x N scores
                        + 2N * 2r d^2 ]                MLP
    head            2 * N * d * P                      decoder tokens to pixels

and one training step costs ``3 x forward x B`` (the backward pass is two matmuls per forward
matmul: gradient of the input and of the weight), the usual "model FLOPs" convention of MFU.

What a counter (``torch.utils.flop_counter.FlopCounterMode``) sees differs in two known ways:

- The images do not require gradients, so the patch embedding's input gradient is never
  computed: the executed step is ``train_step - patch_embed`` (see ``executed_train_step``).
- ``scaled_dot_product_attention`` on CPU dispatches to ``_scaled_dot_product_flash_attention_
  for_cpu``, for which torch 2.14 registers no FLOP formula, so the counter misses all attention
  scores (4 N^2 D per layer) unless the math backend is forced (the unit test does that).
"""

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from backbone.croco import CroCoNet
from backbone.masking import RandomMasking


@dataclass(frozen=True)
class CroCoDims:
    """The numbers the FLOP count depends on (attention heads do not change it)."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    mlp_ratio: float
    decoder_embed_dim: int
    decoder_depth: int

    @classmethod
    def from_config(cls, config: Mapping) -> "CroCoDims":
        """From ``CroCoNet`` keyword arguments (a YAML ``init_args``); missing ones take its defaults."""
        bound = inspect.signature(CroCoNet).bind_partial(**config)
        bound.apply_defaults()
        return cls(**{name: bound.arguments[name] for name in cls.__dataclass_fields__})

    @classmethod
    def from_model(cls, net: CroCoNet) -> "CroCoDims":
        """From a built network (e.g. a preset such as ``croco_large()``)."""
        rows, cols = net.patch_grid
        if rows != cols:
            raise ValueError(f"only square patch grids are supported, got {net.patch_grid}")
        mlp_hidden = net.enc_blocks[0].mlp.fc1.out_features
        return cls(img_size=rows * net.patch_size, patch_size=net.patch_size, embed_dim=net.embed_dim,
                   depth=net.depth, mlp_ratio=mlp_hidden / net.embed_dim,
                   decoder_embed_dim=net.decoder_embed_dim, decoder_depth=len(net.dec_blocks))


def _dims(model: CroCoNet | Mapping | CroCoDims) -> CroCoDims:
    if isinstance(model, CroCoDims):
        return model
    if isinstance(model, nn.Module):
        return CroCoDims.from_model(model)
    return CroCoDims.from_config(model)


def pretrain_step_flops(model: CroCoNet | Mapping | CroCoDims, batch_size: int, mask_ratio: float = 0.9,
                        image_size: int | None = None) -> dict[str, int]:
    """FLOPs of one pretraining step on ``batch_size`` pairs, by part (formula in the module docstring).

    ``model`` is a ``CroCoNet``, its keyword arguments, or ``CroCoDims``; ``image_size`` overrides
    the model's ``img_size`` (the network accepts any multiple of the patch size).

    Returns forward FLOPs per part (``patch_embed``, ``encoder``, ``decoder_embed``,
    ``decoder_self_attn``, ``decoder_cross_attn``, ``decoder_mlp``, ``head``), their sum
    ``forward``, ``train_step`` = 3 x forward (the MFU convention) and ``executed_train_step``
    (without the input gradient of the patch embedding, which autograd never computes).
    """
    dims = _dims(model)
    side = (image_size or dims.img_size) // dims.patch_size
    N = side * side
    V = N - RandomMasking(mask_ratio).num_masked((side, side))
    P = 3 * dims.patch_size**2
    D, L, d, l, r = dims.embed_dim, dims.depth, dims.decoder_embed_dim, dims.decoder_depth, dims.mlp_ratio
    per_pair = {
        "patch_embed": 2 * (V + N) * P * D,
        "encoder": L * (2 * (V + N) * (4 + 2 * r) * D * D + 4 * (V * V + N * N) * D),
        "decoder_embed": 2 * (V + N) * D * d,
        "decoder_self_attn": l * (2 * N * 4 * d * d + 4 * N * N * d),
        "decoder_cross_attn": l * (2 * N * 4 * d * d + 4 * N * N * d),
        "decoder_mlp": l * 2 * N * 2 * r * d * d,
        "head": 2 * N * d * P,
    }
    flops = {name: round(value * batch_size) for name, value in per_pair.items()}
    flops["forward"] = sum(flops.values())
    flops["train_step"] = 3 * flops["forward"]
    flops["executed_train_step"] = flops["train_step"] - flops["patch_embed"]
    return flops
