"""Image-level classification from encoder tokens (gesture recognition)."""

from typing import Literal

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from heads.base import Head


class ClassificationHead(Head):
    """Encoder tokens -> one pooled vector per image -> MLP -> class logits.

    Attention pooling lets a learned query weigh the tokens that carry the class (the fingers,
    not the background); its query and projection biases start at zero, so it starts out as
    mean pooling and only moves away from it as far as training asks. ``mean`` is the plain
    baseline of MAE-style probing.

    The class count usually comes from the data (the gesture task calls ``set_num_classes`` at
    setup with the length of the DataModule's class list), so YAML need not repeat it.

    Args:
        num_classes: number of classes; None: set later with ``set_num_classes``.
        pool: ``attention`` (a learned query attends over the tokens) or ``mean``.
        hidden_dim: width of the MLP's hidden layer (default: the backbone's embed dim).
        num_heads: heads of the attention pooling (default: embed dim // 64, at least 1).
        dropout: dropout on the MLP's hidden layer.
    """

    def __init__(self, num_classes: int | None = None, pool: Literal["attention", "mean"] = "attention",
                 hidden_dim: int | None = None, num_heads: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool must be 'attention' or 'mean', got {pool!r}")
        self.num_classes = num_classes
        self.pool = pool
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.mlp: Mlp | None = None

    def bind(self, backbone: nn.Module) -> None:
        self.embed_dim = backbone.embed_dim
        if self.pool == "attention":
            heads = self.num_heads or max(1, self.embed_dim // 64)
            if self.embed_dim % heads:
                raise ValueError(f"attention pooling: embed dim {self.embed_dim} is not divisible by {heads} heads; "
                                 f"set the head's num_heads to a divisor of it")
            # 1-D, like other learned tokens, so the optimiser's 1-D rule keeps it out of weight decay.
            self.query = nn.Parameter(torch.zeros(self.embed_dim))
            self.attention = nn.MultiheadAttention(self.embed_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(self.embed_dim)
        if self.num_classes is not None:
            self.mlp = self._mlp(self.num_classes)

    def _mlp(self, num_classes: int) -> Mlp:
        hidden = self.hidden_dim or self.embed_dim
        return Mlp(self.embed_dim, hidden, out_features=num_classes, drop=(self.dropout, 0.0))

    def set_num_classes(self, num_classes: int) -> None:
        """Create the output layers for ``num_classes`` (after ``bind``); a second call must agree."""
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if self.num_classes is not None and self.num_classes != num_classes:
            raise ValueError(f"ClassificationHead was built for {self.num_classes} classes, the data has "
                             f"{num_classes}: remove num_classes from the head's arguments to take it from the data")
        self.num_classes = num_classes
        if self.mlp is None:
            self.mlp = self._mlp(num_classes)

    def pooled(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, D) normalised image vector."""
        if self.pool == "mean":
            return self.norm(tokens.mean(dim=1))
        query = self.query.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return self.norm(self.attention(query, tokens, tokens, need_weights=False)[0][:, 0])

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) encoder tokens -> (B, num_classes) logits."""
        if self.mlp is None:
            raise RuntimeError("ClassificationHead has no class count yet: pass num_classes or call set_num_classes "
                               "(the gesture task does so at setup from the DataModule's classes)")
        return self.mlp(self.pooled(tokens))
