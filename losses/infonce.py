"""InfoNCE with a queue of negatives: the MoCo loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCELoss(nn.Module):
    r"""MoCo's InfoNCE (He et al., CVPR 2020; MoCo v2: Chen et al., 2020, tau 0.2).

    For a query ``q_i``, its positive key ``k_i`` (the other view through the momentum
    encoder) and the ``K`` queued keys ``n_j`` of earlier batches, all L2-normalised,

    .. math::

        \ell_i = -\log \frac{\exp(q_i \cdot k_i / \tau)}
                            {\exp(q_i \cdot k_i / \tau) + \sum_{j=1}^{K} \exp(q_i \cdot n_j / \tau)},
        \qquad L = \frac{1}{N} \sum_i \ell_i ,

    a (K+1)-way cross-entropy whose label is the positive (MoCo's Algorithm 1). Queue
    entries marked in ``exclude`` (N x K) leave that query's sum (their logit is -inf):
    MoCo masks the keys of the query's own image there. Keys carry no gradient. Every term belongs to one query, and the queue is the same on
    every process, so P processes x n queries average to the loss of 1 x P*n.

    Args:
        temperature: ``tau`` (``--tau``, MoCo v2's 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def logits(self, q: Tensor, k: Tensor, queue: Tensor, exclude: Tensor | None = None) -> Tensor:
        """The N x (1 + K) logits: column 0 the positive, then the queue; ``exclude`` (N x K, True =
        not a negative of that query, e.g. a key of the query's own image) sets those to -inf."""
        if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"InfoNCE needs N x d queries and keys and a K x d queue, got {tuple(q.shape)}, "
                             f"{tuple(k.shape)} and {tuple(queue.shape)}")
        q = F.normalize(q, dim=1)
        k = F.normalize(k.detach(), dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue.detach().to(q.dtype).T
        if exclude is not None:
            l_neg = l_neg.masked_fill(exclude, float("-inf"))
        return torch.cat([l_pos, l_neg], dim=1) / self.temperature

    @staticmethod
    def from_logits(logits: Tensor) -> Tensor:
        """The cross-entropy whose label is the positive (column 0)."""
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def forward(self, q: Tensor, k: Tensor, queue: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Loss for queries ``q`` (N x d), positive keys ``k`` (N x d) and normalised queued keys (K x d);
        queue entries marked in ``exclude`` (N x K) are no negatives of that query."""
        return self.from_logits(self.logits(q, k, queue, exclude))
