"""InfoNCE with a queue of negatives (MoCo v1/v2) and MoCo v3's symmetric in-batch version."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.dist import all_gather_nograd, rank
from losses.precision import full_precision


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

    @full_precision
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

    @full_precision
    def forward(self, q: Tensor, k: Tensor, queue: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Loss for queries ``q`` (N x d), positive keys ``k`` (N x d) and normalised queued keys (K x d);
        queue entries marked in ``exclude`` (N x K) are no negatives of that query."""
        return self.from_logits(self.logits(q, k, queue, exclude))


class MoCoV3Loss(nn.Module):
    r"""MoCo v3's symmetric contrastive loss (Chen, Xie & He, ICCV 2021, Algorithm 1).

    Each query (predictor output of one view) is contrasted with the momentum keys of the OTHER
    view of every image in the global batch: for N queries on this process and the keys of all
    processes gathered in rank order,

    .. math::

        \mathrm{ctr}(q, k) = 2\tau \cdot \mathrm{CE}\big(q \cdot k_{\mathrm{all}}^\top / \tau,\
                             \mathrm{rank} \cdot N + i\big), \qquad
        L = \mathrm{ctr}(q_1, k_2) + \mathrm{ctr}(q_2, k_1),

    q and k L2-normalised, no queue (moco-v3 moco/builder.py @337f3c96 ``contrastive_loss``;
    the factor 2 tau is the code's). Keys carry no gradient.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MoCo v3 temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def contrast(self, q: Tensor, k: Tensor) -> Tensor:
        """``ctr(q, k)``: this process's queries against every process's keys (the positive: its own image's)."""
        q = F.normalize(q, dim=1)
        k = F.normalize(all_gather_nograd(k.detach()), dim=1)
        logits = q @ k.to(q.dtype).T / self.temperature
        labels = torch.arange(len(q), device=q.device) + len(q) * rank()
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    @full_precision
    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """Queries and keys of view 1 and view 2 (N x d each): ``ctr(q1, k2) + ctr(q2, k1)``."""
        return self.contrast(q1, k2) + self.contrast(q2, k1)
