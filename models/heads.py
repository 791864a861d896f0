"""Heads that sit on the pooled backbone features."""
from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """SimCLR projection head: Linear -> BatchNorm1d -> ReLU -> Linear.

    The contrastive loss is computed on its output (``--feature_dim``, default 128);
    the backbone features before it are what is kept and evaluated, as in SimCLR.
    ``hidden_dim`` defaults to ``in_dim``.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Project N x in_dim features to N x out_dim."""
        return self.net(x)
