"""Task heads, each bound to a backbone and swapped in YAML."""

from heads.base import Head
from heads.classify import ClassificationHead
from heads.completion import CompletionHead, patchify, unpatchify

__all__ = ["ClassificationHead", "CompletionHead", "Head", "patchify", "unpatchify"]
