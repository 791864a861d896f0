"""The BYOL loss: normalised prediction error to the target's projection, both ways."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from losses.precision import full_precision


class BYOLLoss(nn.Module):
    r"""Symmetric BYOL loss (Grill et al., NeurIPS 2020, eq. 2 and its symmetrised form).

    With online predictions ``p_1, p_2`` of the two views and target projections
    ``z'_1, z'_2`` (no gradient),

    .. math::

        L = \frac{1}{N} \sum_i \Big[ \big\| \bar p_{1,i} - \bar z'_{2,i} \big\|^2
                                   + \big\| \bar p_{2,i} - \bar z'_{1,i} \big\|^2 \Big]
          = \frac{1}{N} \sum_i \big[ 4 - 2\cos(p_{1,i}, z'_{2,i}) - 2\cos(p_{2,i}, z'_{1,i}) \big],

    bars denoting L2 normalisation. Per-sample terms only: no cross-process statistics.
    """

    @full_precision
    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Predictions ``p1``, ``p2`` of views 1 and 2, target projections ``z1``, ``z2`` (N x d each)."""
        def term(p: Tensor, z: Tensor) -> Tensor:
            return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()
        return term(p1, z2) + term(p2, z1)
