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


def mlp(dims: list[int], bn: bool = True, bias: bool = True, last_bn: bool = False,
        last_bn_affine: bool = True, last_bias: bool = True, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]`` as the SSL papers build their heads.

    Hidden layers are Linear -> (BatchNorm1d) -> activation; the last layer is a plain
    Linear, optionally followed by a BatchNorm1d (SimSiam's projector ends with one
    without affine parameters). With ``bn`` the hidden Linear layers carry no bias
    (the BatchNorm shift replaces it), as in the reference implementations.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {dims}")
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(a, b, bias=bias and not bn))
        if bn:
            layers.append(nn.BatchNorm1d(b))
        layers.append(act())
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
    return nn.Sequential(*layers)
