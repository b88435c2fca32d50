"""ViT encoder with 2D RoPE, CroCo cross-attention decoder, masking and weight conversion."""

from backbone.croco import CroCoNet, croco_base, croco_large, croco_small, croco_tiny
from backbone.masking import HumanMasking, RandomMasking
from backbone.rope import RoPE2D

__all__ = ["CroCoNet", "HumanMasking", "RandomMasking", "RoPE2D", "croco_base", "croco_large", "croco_small",
           "croco_tiny"]
