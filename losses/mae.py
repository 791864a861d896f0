"""MAE's reconstruction loss (He et al., CVPR 2022), with per-band normalised patch targets.

Images are cut into ``p x p`` patches and flattened in MAE's ``(p, q, c)`` order (channel
fastest; ``patchify`` of models_mae.py with ``in_chans`` bands, as SSL4EO-S12's copy). The loss is
the mean squared error per patch, averaged over the MASKED patches only::

    loss = sum_l mask_l * mean_k (pred_lk - target_lk)^2 / sum_l mask_l

With ``norm_pix`` (MAE's ``norm_pix_loss``) each target patch is standardised by its own mean and
(unbiased) variance plus 1e-6, as MAE does, but PER BAND: each band's ``p x p`` pixels of a patch
by that band's mean and variance, not all bands of the patch together. Sentinel-2 bands differ in
level and contrast (B10 is nearly constant, NIR is bright over vegetation), and a joint
normalisation would let the brightest bands set every band's scale. For one band the two agree.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from losses.precision import full_precision

NORM_EPS = 1e-6      # models_mae.py forward_loss: (var + 1.e-6) ** .5


def patchify(imgs: Tensor, p: int) -> Tensor:
    """N x C x H x W -> N x L x (p * p * C), patches row-major, each flattened in (p, q, c) order."""
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"a {h}x{w} image does not split into {p}x{p} patches")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, p: int, c: int, h: int | None = None) -> Tensor:
    """The inverse of :func:`patchify`: N x L x (p * p * c) -> N x c x H x W (square unless ``h`` patches high)."""
    n, length, _ = x.shape
    gh = h if h is not None else int(round(length ** 0.5))
    gw = length // gh
    x = x.reshape(n, gh, gw, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, gh * p, gw * p)


def normalise_patches(target: Tensor, channels: int, eps: float = NORM_EPS) -> Tensor:
    """Each band of each patch standardised by its own mean and unbiased variance (N x L x p*p*C, (p, q, c) order)."""
    n, length, k = target.shape
    t = target.reshape(n, length, k // channels, channels)           # pixels x bands
    mean = t.mean(dim=2, keepdim=True)
    var = t.var(dim=2, keepdim=True)
    return ((t - mean) / (var + eps) ** 0.5).reshape(n, length, k)


def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked patches of the per-patch MSE (``mask`` N x L: 1 masked, 0 visible)."""
    loss = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum()


class MAELoss(nn.Module):
    """``forward(imgs, pred, mask)``: the loss of the module docstring for ``p x p`` patches."""

    def __init__(self, patch: int, norm_pix: bool = True) -> None:
        super().__init__()
        self.patch, self.norm_pix = patch, norm_pix

    def target(self, imgs: Tensor) -> Tensor:
        """What the decoder predicts: the patches, per-band normalised with ``norm_pix``."""
        t = patchify(imgs.float(), self.patch)
        return normalise_patches(t, imgs.shape[1]) if self.norm_pix else t

    @full_precision
    def forward(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        return masked_patch_loss(pred, self.target(imgs), mask)
