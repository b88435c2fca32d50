"""Task heads, each bound to a backbone and swapped in YAML."""

import importlib
import warnings

from heads.base import Head
from heads.classify import ClassificationHead
from heads.completion import CompletionHead, patchify, unpatchify
from heads.dense import DenseHead
from heads.joint_maps import JointMapHead
from heads.mesh_head import MeshHead
from heads.parametric import ParametricHead
from heads.vertex import VertexHead

__all__ = ["ClassificationHead", "CompletionHead", "DenseHead", "Head", "JointMapHead", "MeshHead", "ParametricHead",
           "VertexHead", "patchify", "unpatchify"]

_MOVED = {"BodyModel": "body", "weak_perspective_to_translation": "body.camera"}


def __getattr__(name: str) -> object:
    """``heads.BodyModel`` (YAML written before the body package) still resolves, with a warning."""
    if name not in _MOVED:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    warnings.warn(f"heads.{name} moved to {_MOVED[name]}.{name}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
