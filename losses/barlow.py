"""The Barlow Twins loss over the global batch."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from config.dist import gather_with_grad
from losses.precision import full_precision


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class BarlowTwinsLoss(nn.Module):
    r"""Redundancy reduction (Zbontar et al., ICML 2021, eq. 1 and Algorithm 1).

    Each view's embeddings are standardised along the batch (``z`` minus its batch mean,
    divided by its batch std, unbiased as in Algorithm 1; ``eps`` under the root), and

    .. math::

        \mathcal{C}_{ij} = \frac{1}{N} \sum_b \hat z^A_{b,i} \hat z^B_{b,j}, \qquad
        L = \sum_i (1 - \mathcal{C}_{ii})^2 + \lambda \sum_i \sum_{j \ne i} \mathcal{C}_{ij}^2 .

    The batch is the GLOBAL batch: with ``gather`` in a distributed run the rows of every
    process are gathered with gradient, so every process computes the loss of the whole
    batch and P x n rows give the loss and gradients of 1 x P*n (DDP averages the P equal
    copies).

    Args:
        lambd: weight of the redundancy term (5e-3 in the paper).
        gather: standardise and correlate over all processes' rows when distributed.
    """

    def __init__(self, lambd: float = 5e-3, gather: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambd, self.gather, self.eps = lambd, gather, eps

    @full_precision
    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Embeddings of views A and B, N x d each; row i of both comes from one image."""
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"Barlow Twins needs two N x d tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        if self.gather:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        n = z_a.shape[0]
        if n < 2:
            raise ValueError("Barlow Twins standardises along the batch and needs at least 2 rows")
        za = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0) + self.eps)
        zb = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0) + self.eps)
        c = za.T @ zb / n
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
        return on_diag + self.lambd * off_diag
