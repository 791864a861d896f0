"""The VICReg loss: invariance, variance and covariance terms over the global batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.dist import gather_with_grad
from losses.barlow import off_diagonal
from losses.precision import full_precision


class VICRegLoss(nn.Module):
    r"""Variance-invariance-covariance regularisation (Bardes et al., ICLR 2022, eq. 1-6, Algorithm 1).

    For embeddings ``Z, Z'`` (N x d) of the two views,

    .. math::

        s = \frac{1}{N} \sum_b \| z_b - z'_b \|^2 / d \;(\text{MSE}), \qquad
        v(Z) = \frac{1}{d} \sum_j \max\big(0, 1 - \sqrt{\mathrm{Var}(Z_{:,j}) + \epsilon}\big),

        c(Z) = \frac{1}{d} \sum_{i \ne j} C(Z)_{ij}^2, \quad C(Z) = \frac{1}{N-1} (Z - \bar Z)^\top (Z - \bar Z),

        L = \lambda\, s + \mu\, [v(Z) + v(Z')] / 2 + \nu\, [c(Z) + c(Z')],

    with ``lambda, mu, nu = 25, 25, 1`` and ``epsilon = 1e-4``, exactly as the authors'
    code (facebookresearch/vicreg ``main_vicreg.py`` @b42aa232: ``std_loss =
    mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``, the two covariance terms
    summed). The paper's Algorithm 1 and solo-learn sum the variance terms without the
    halving, which at equal weights doubles the variance pressure. All three terms use the
    GLOBAL batch (rows gathered with gradient when distributed), so P x n rows give the
    loss and gradients of 1 x P*n (the official code takes the invariance term per GPU).
    """

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 gather: bool = True, eps: float = 1e-4) -> None:
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.gather, self.eps = gather, eps

    @full_precision
    def terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The three unweighted terms (invariance, variance, covariance) for N x d embeddings."""
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"VICReg needs two N x d tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        if self.gather:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        n, d = z_a.shape
        if n < 2:
            raise ValueError("VICReg's variance and covariance terms need at least 2 rows")
        sim = F.mse_loss(z_a, z_b)
        std = sum(F.relu(1 - torch.sqrt(z.var(0) + self.eps)).mean() / 2 for z in (z_a, z_b))
        cov = sum(off_diagonal((zc := z - z.mean(0)).T @ zc / (n - 1)).pow(2).sum() / d for z in (z_a, z_b))
        return {"inv": sim, "var": std, "cov": cov}

    def combine(self, t: dict[str, Tensor]) -> Tensor:
        """The weighted sum of :meth:`terms`."""
        return self.sim_coeff * t["inv"] + self.std_coeff * t["var"] + self.cov_coeff * t["cov"]

    @full_precision
    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return self.combine(self.terms(z_a, z_b))
