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

    a (K+1)-way cross-entropy whose label is the positive (MoCo's Algorithm 1). Keys
    carry no gradient. Every term belongs to one query, and the queue is the same on
    every process, so P processes x n queries average to the loss of 1 x P*n.

    Args:
        temperature: ``tau`` (``--tau``, MoCo v2's 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        """Loss for queries ``q`` (N x d), positive keys ``k`` (N x d) and normalised queued keys (K x d)."""
        if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"InfoNCE needs N x d queries and keys and a K x d queue, got {tuple(q.shape)}, "
                             f"{tuple(k.shape)} and {tuple(queue.shape)}")
        q = F.normalize(q, dim=1)
        k = F.normalize(k.detach(), dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue.detach().to(q.dtype).T
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
