"""The SimSiam loss: negative cosine between prediction and the stopped projection, both ways."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from losses.precision import full_precision


class SimSiamLoss(nn.Module):
    r"""Symmetrised negative cosine with stop-gradient (Chen & He, CVPR 2021, Algorithm 1).

    .. math::

        \mathcal{D}(p, z) = -\frac{1}{N} \sum_i \frac{p_i}{\|p_i\|} \cdot \frac{z_i}{\|z_i\|},
        \qquad L = \tfrac12 \mathcal{D}(p_1, \mathrm{sg}(z_2)) + \tfrac12 \mathcal{D}(p_2, \mathrm{sg}(z_1)),

    ``sg`` the stop-gradient (``detach``). Minimum -1. Per-sample terms only.
    """

    @full_precision
    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Predictions ``p1``, ``p2`` and projections ``z1``, ``z2`` (N x d each) of views 1 and 2."""
        d1 = -F.cosine_similarity(p1, z2.detach(), dim=1).mean()
        d2 = -F.cosine_similarity(p2, z1.detach(), dim=1).mean()
        return 0.5 * d1 + 0.5 * d2
