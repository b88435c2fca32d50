"""Task heads, each bound to a backbone and swapped in YAML."""

from heads.base import Head
from heads.completion import CompletionHead, patchify, unpatchify

__all__ = ["CompletionHead", "Head", "patchify", "unpatchify"]
