"""The losses of modes 911-916 against direct transcriptions of their papers' pseudo-code.

LightlySSL is not used as the reference: lightly 1.6.0 (checked with ``pip download --no-deps``)
accepts torch 2.14.1 but requires pytorch_lightning and hydra-core, a heavy test-only extra for
six short formulas. Each reference below is the paper's
Algorithm 1 (or equation) written out in plain torch on the same tensors, in float64.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import BarlowTwinsLoss, BYOLLoss, DINOLoss, InfoNCELoss, MoCoV3Loss, SimSiamLoss, VICRegLoss
from losses.barlow import off_diagonal


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def grads(loss: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def assert_same(ours: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...], rtol: float = 1e-7) -> None:
    assert ours.item() == pytest.approx(ref.item(), rel=rtol, abs=1e-9)
    for a, b in zip(grads(ours, inputs), grads(ref, inputs)):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b, rtol=rtol * 10, atol=1e-9)


# --- MoCo, Algorithm 1 -------------------------------------------------------------------
def moco_algorithm1(q: torch.Tensor, k: torch.Tensor, queue_ck: torch.Tensor, t: float) -> torch.Tensor:
    """He et al. 2020, Algorithm 1: queue is C x K; q, k normalised (MoCo's code)."""
    n, c = q.shape
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1).detach()
    l_pos = torch.bmm(q.view(n, 1, c), k.view(n, c, 1)).view(n, 1)
    l_neg = torch.mm(q.view(n, c), queue_ck)
    logits = torch.cat([l_pos, l_neg], dim=1)
    labels = torch.zeros(n, dtype=torch.long)
    return F.cross_entropy(logits / t, labels)


def test_infonce_matches_moco_algorithm1() -> None:
    q, k = randn(6, 8, seed=1), randn(6, 8, seed=2)
    queue = F.normalize(randn(20, 8, seed=3).detach(), dim=1)
    ours = InfoNCELoss(0.2)(q, k, queue)
    ref = moco_algorithm1(q, k, queue.T, 0.2)
    assert_same(ours, ref, (q, k))
    # and the explicit per-query formula
    qn, kn = F.normalize(q.detach(), dim=1), F.normalize(k.detach(), dim=1)
    terms = [-math.log(math.exp(qn[i] @ kn[i] / 0.2) /
                       (math.exp(qn[i] @ kn[i] / 0.2) + sum(math.exp(qn[i] @ n / 0.2) for n in queue)))
             for i in range(6)]
    assert ours.item() == pytest.approx(sum(terms) / 6, rel=1e-9)
    # keys take no gradient
    assert grads(ours, (k,))[0] is None


# --- MoCo v3, Algorithm 1 ----------------------------------------------------------------
def mocov3_algorithm1(q1, q2, k1, k2, t: float) -> torch.Tensor:
    """Chen, Xie & He 2021, Algorithm 1: ctr(q, k) = 2t CE(q k^T / t, arange(N)), summed over the two orders."""
    def ctr(q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        logits = torch.mm(q, k.t())
        return 2 * t * F.cross_entropy(logits / t, torch.arange(len(q)))
    return ctr(q1, k2) + ctr(q2, k1)


def test_mocov3_matches_algorithm1() -> None:
    q1, q2, k1, k2 = (randn(6, 8, seed=s) for s in (1, 2, 3, 4))
    ours = MoCoV3Loss(0.2)(q1, q2, k1, k2)
    assert_same(ours, mocov3_algorithm1(q1, q2, k1, k2, 0.2), (q1, q2))
    assert all(g is None for g in grads(MoCoV3Loss(0.2)(q1, q2, k1, k2), (k1, k2)))     # keys take no gradient
    # a perfect match of every query with its own key (and no other) gives 2 x 2t x log(1 + (N-1) e^{-1/t})
    eye = torch.eye(6, 8, dtype=torch.float64)
    assert float(MoCoV3Loss(0.2)(eye, eye, eye, eye)) == pytest.approx(4 * 0.2 * math.log(1 + 5 * math.exp(-5)))


# --- BYOL ----------------------------------------------------------------------------------
def byol_reference(p1, p2, z1, z2) -> torch.Tensor:
    """Grill et al. 2020, eq. 2 symmetrised: ||p/|p| - z'/|z'|||^2, each view predicting the other."""
    def loss_fn(x, y):
        x = x / x.norm(dim=-1, keepdim=True)
        y = y.detach() / y.detach().norm(dim=-1, keepdim=True)
        return ((x - y) ** 2).sum(dim=-1)
    return (loss_fn(p1, z2) + loss_fn(p2, z1)).mean()


def test_byol_matches_the_paper() -> None:
    p1, p2, z1, z2 = (randn(5, 7, seed=s) for s in range(4))
    assert_same(BYOLLoss()(p1, p2, z1, z2), byol_reference(p1, p2, z1, z2), (p1, p2, z1, z2))
    # identical prediction and target: zero loss
    x = randn(3, 4, seed=9)
    assert BYOLLoss()(x, x, x, x).item() == pytest.approx(0.0, abs=1e-12)


# --- SimSiam, Algorithm 1 ----------------------------------------------------------------
def simsiam_algorithm1(p1, p2, z1, z2) -> torch.Tensor:
    def D(p, z):  # noqa: N802 - the paper's name
        z = z.detach()
        p = F.normalize(p, dim=1)
        z = F.normalize(z, dim=1)
        return -(p * z).sum(dim=1).mean()
    return D(p1, z2) / 2 + D(p2, z1) / 2


def test_simsiam_matches_algorithm1_and_stops_gradients() -> None:
    p1, p2, z1, z2 = (randn(5, 7, seed=s + 10) for s in range(4))
    ours = SimSiamLoss()(p1, p2, z1, z2)
    assert_same(ours, simsiam_algorithm1(p1, p2, z1, z2), (p1, p2, z1, z2))
    assert grads(ours, (z1,))[0] is None


# --- Barlow Twins, Algorithm 1 -------------------------------------------------------------
def barlow_algorithm1(z_a, z_b, lambd) -> torch.Tensor:
    n, d = z_a.shape
    z_a_norm = (z_a - z_a.mean(0)) / z_a.std(0)
    z_b_norm = (z_b - z_b.mean(0)) / z_b.std(0)
    c = torch.mm(z_a_norm.T, z_b_norm) / n
    c_diff = (c - torch.eye(d, dtype=c.dtype)).pow(2)
    weights = torch.full((d, d), lambd, dtype=c.dtype)
    weights.fill_diagonal_(1.0)
    return (c_diff * weights).sum()


def test_barlow_matches_algorithm1() -> None:
    z_a, z_b = randn(16, 6, seed=20), randn(16, 6, seed=21)
    ours = BarlowTwinsLoss(5e-3, eps=0.0)(z_a, z_b)
    assert_same(ours, barlow_algorithm1(z_a, z_b, 5e-3), (z_a, z_b))
    # the default eps under the root changes the value by ~1e-5 relative only
    assert BarlowTwinsLoss(5e-3)(z_a, z_b).item() == pytest.approx(ours.item(), rel=1e-4)
    # perfectly correlated, decorrelated dimensions: loss 0 up to the (N-1)/N of the unbiased std
    x = torch.randn(16, 6, dtype=torch.float64)
    w = torch.linalg.qr(x - x.mean(0))[0] * 4             # zero-mean, orthogonal columns
    assert BarlowTwinsLoss(eps=0.0)(w, w).item() == pytest.approx(6 * (1 - 15 / 16) ** 2, abs=1e-9)


def test_off_diagonal() -> None:
    m = torch.arange(16.0).view(4, 4)
    assert off_diagonal(m).tolist() == [v for i, v in enumerate(m.flatten().tolist()) if i % 5]


# --- VICReg, the official code --------------------------------------------------------------
def vicreg_official(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0) -> torch.Tensor:
    """facebookresearch/vicreg main_vicreg.py @b42aa232, VICReg.forward after the projector, one process
    (FullGatherLayer is the identity), batch_size = N, num_features = d."""
    batch_size, num_features = x.shape

    def off_diagonal_official(m):
        n, k = m.shape
        assert n == k
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal_official(cov_x).pow_(2).sum().div(num_features) \
        + off_diagonal_official(cov_y).pow_(2).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@pytest.mark.parametrize("scale", [0.3, 3.0])      # below 1: the variance hinge is active
def test_vicreg_matches_the_official_code(scale: float) -> None:
    z_a = (randn(12, 5, seed=30) * scale).detach().requires_grad_()
    z_b = (randn(12, 5, seed=31) * scale).detach().requires_grad_()
    ours = VICRegLoss()(z_a, z_b)
    assert_same(ours, vicreg_official(z_a, z_b), (z_a, z_b))
    terms = VICRegLoss().terms(z_a, z_b)
    assert (terms["var"].item() > 0) == (scale < 1)
    assert VICRegLoss(1, 0, 0)(z_a, z_b).item() == pytest.approx(F.mse_loss(z_a, z_b).item())
    # the variance term is the MEAN of the two branches' hinges (the paper's Algorithm 1 sums them)
    za, zb = z_a.detach(), z_b.detach()
    hinge = [F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean().item() for z in (za, zb)]
    assert terms["var"].item() == pytest.approx((hinge[0] + hinge[1]) / 2, rel=1e-12)
    if scale < 1:
        assert VICRegLoss(0, 1, 0)(z_a, z_b).item() == pytest.approx(sum(hinge) / 2, rel=1e-12)


# --- DINO, Algorithm 1 ---------------------------------------------------------------------
def dino_H(t, s, C, tps, tpt) -> torch.Tensor:  # noqa: N802 - the paper's name
    t = t.detach()
    s = F.softmax(s / tps, dim=1)
    t = F.softmax((t - C) / tpt, dim=1)
    return -(t * torch.log(s)).sum(dim=1).mean()


def test_dino_matches_algorithm1_and_updates_the_centre() -> None:
    s1, s2, t1, t2 = (randn(6, 9, seed=40 + i) for i in range(4))
    C0 = randn(1, 9, seed=50).detach() * 0.1
    loss_fn = DINOLoss(9, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9).double()
    loss_fn.center.copy_(C0)
    ours = loss_fn([s1, s2], [t1, t2], update_center=False)
    ref = dino_H(t1, s2, C0, 0.1, 0.04) / 2 + dino_H(t2, s1, C0, 0.1, 0.04) / 2
    assert_same(ours, ref, (s1, s2, t1, t2))
    assert grads(ours, (t1,))[0] is None
    loss_fn([s1, s2], [t1, t2])
    expected = 0.9 * C0 + 0.1 * torch.cat([t1, t2]).detach().mean(dim=0)
    torch.testing.assert_close(loss_fn.center, expected, rtol=0, atol=1e-12)


def test_dino_multicrop_averages_every_teacher_student_pair_but_the_same_crop() -> None:
    student = [randn(4, 7, seed=60 + i) for i in range(5)]        # 2 global + 3 local
    teacher = [randn(4, 7, seed=70 + i) for i in range(2)]
    loss_fn = DINOLoss(7).double()
    ours = loss_fn(student, teacher, update_center=False)
    pairs = [(g, v) for g in range(2) for v in range(5) if v != g]
    ref = sum(dino_H(teacher[g], student[v], loss_fn.center, 0.1, 0.04) for g, v in pairs) / len(pairs)
    assert len(pairs) == 8
    assert_same(ours, ref, tuple(student))


def test_dino_centre_from_the_first_batch() -> None:
    """center_init 'first': step 1 centres with the batch's own mean teacher output (not 0) and leaves the centre
    there; step 2 is the ordinary EMA. The zero start (the paper's code) centres step 1 with 0."""
    s1, s2 = randn(5, 6, seed=80), randn(5, 6, seed=81)
    t1, t2 = randn(5, 6, seed=82) + 3.0, randn(5, 6, seed=83) + 3.0     # a large common offset to remove
    mean1 = torch.cat([t1, t2]).detach().mean(dim=0, keepdim=True)
    first = DINOLoss(6, center_init="first").double()
    assert not bool(first.center_ready)
    ours = first([s1, s2], [t1, t2])
    ref = dino_H(t1, s2, mean1, 0.1, 0.04) / 2 + dino_H(t2, s1, mean1, 0.1, 0.04) / 2
    assert_same(ours, ref, (s1, s2))
    torch.testing.assert_close(first.center, mean1, rtol=0, atol=1e-12)
    t3, t4 = randn(5, 6, seed=84), randn(5, 6, seed=85)
    first([s1, s2], [t3, t4])
    torch.testing.assert_close(first.center, 0.9 * mean1 + 0.1 * torch.cat([t3, t4]).mean(dim=0, keepdim=True),
                               rtol=0, atol=1e-12)
    zero = DINOLoss(6).double()
    ref0 = dino_H(t1, s2, torch.zeros(1, 6, dtype=torch.float64), 0.1, 0.04) / 2 \
        + dino_H(t2, s1, torch.zeros(1, 6, dtype=torch.float64), 0.1, 0.04) / 2
    assert_same(zero([s1, s2], [t1, t2]), ref0, (s1, s2))
    torch.testing.assert_close(zero.center, 0.1 * mean1, rtol=0, atol=1e-12)


def test_dino_teacher_temperature_of_the_step_and_entropy() -> None:
    s1, s2, t1, t2 = (randn(4, 9, seed=90 + i) for i in range(4))
    loss_fn = DINOLoss(9).double()
    ours = loss_fn([s1, s2], [t1, t2], update_center=False, teacher_temp=torch.tensor(0.055, dtype=torch.float64))
    zero = torch.zeros(1, 9, dtype=torch.float64)
    assert_same(ours, dino_H(t1, s2, zero, 0.1, 0.055) / 2 + dino_H(t2, s1, zero, 0.1, 0.055) / 2, (s1, s2))
    p = F.softmax(torch.cat([t1, t2]).detach() / 0.055, dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean() / math.log(9)
    assert float(loss_fn.teacher_entropy) == pytest.approx(float(entropy), rel=1e-9)


def test_infonce_excluded_queue_entries_are_no_negatives() -> None:
    """Masking queue entries of a query equals removing them from that query's denominator."""
    q, k = randn(3, 8, seed=4), randn(3, 8, seed=5)
    queue = F.normalize(randn(10, 8, seed=6).detach(), dim=1)
    exclude = torch.zeros(3, 10, dtype=torch.bool)
    exclude[0, [1, 7]] = True
    exclude[2, 4] = True
    ours = InfoNCELoss(0.2)(q, k, queue, exclude)
    per_query = [moco_algorithm1(q[i:i + 1], k[i:i + 1], queue[~exclude[i]].T, 0.2) for i in range(3)]
    assert_same(ours, sum(per_query) / 3, (q,))
