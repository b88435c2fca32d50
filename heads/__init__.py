"""Task heads, each bound to a backbone and swapped in YAML."""

from heads.base import Head
from heads.body_model import BodyModel
from heads.camera import weak_perspective_to_translation
from heads.classify import ClassificationHead
from heads.completion import CompletionHead, patchify, unpatchify
from heads.dense import DenseHead
from heads.joint_maps import JointMapHead
from heads.parametric import ParametricHead
from heads.vertex import VertexHead

__all__ = ["BodyModel", "ClassificationHead", "CompletionHead", "DenseHead", "Head", "JointMapHead", "ParametricHead",
           "VertexHead", "patchify", "unpatchify", "weak_perspective_to_translation"]
