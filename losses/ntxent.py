"""NT-Xent, the SimCLR contrastive loss, with negatives from every process."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.dist import gather_with_grad, is_dist, rank
from losses.precision import full_precision


class NTXentLoss(nn.Module):
    r"""Normalised temperature-scaled cross-entropy (Chen et al., SimCLR, 2020).

    For ``N`` pairs of projections, the ``2N`` rows ``z`` (both views) are
    L2-normalised and, for each row ``i`` with positive ``p(i)`` (the other view of
    the same image),

    .. math::

        \ell_i = -\log \frac{\exp(z_i \cdot z_{p(i)} / \tau)}
                            {\sum_{k \ne i} \exp(z_i \cdot z_k / \tau)},
        \qquad L = \frac{1}{2N} \sum_i \ell_i .

    The similarities are computed in float32 even under bf16 autocast. It is computed as a cross-entropy over the rows of ``z_i \cdot z_k / \tau`` with the
    self-similarity masked out (log-sum-exp form, finite down to ``tau = 0.01``),
    instead of the 2N x 2N x d cosine broadcast many implementations use.

    With ``gather=True`` in a distributed run, the negatives are the rows of ALL
    processes, gathered with gradient, and each process averages over its own rows;
    with DDP averaging the gradients, P processes x n pairs train exactly like
    1 process x P*n pairs.

    Args:
        temperature: ``tau`` (``--tau``, default 0.5).
        gather: use the other processes' rows as negatives when distributed.
    """

    def __init__(self, temperature: float = 0.5, gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    @full_precision
    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Loss for projections ``z_a``, ``z_b`` (N x d each) of the two views; row i pairs with row i."""
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"NT-Xent needs two N x d tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        n = z_a.shape[0]
        # float32 at least and autocast off (@full_precision): in bf16 (8 mantissa bits) the cosine of
        # two close embeddings is off by ~4e-3, i.e. 0.04 in a logit at tau 0.1
        z_local = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)                # [a; b]: 2n x d
        offset = 0
        z_all = z_local
        if self.gather and is_dist():
            z_all = gather_with_grad(z_local)                               # [a_0; b_0; a_1; b_1; ...]
            offset = rank() * 2 * n
        logits = z_local @ z_all.T / self.temperature
        rows = torch.arange(2 * n, device=z_local.device)
        logits[rows, rows + offset] = float("-inf")
        labels = (rows + n) % (2 * n) + offset
        return F.cross_entropy(logits, labels)
