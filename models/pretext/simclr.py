"""SimCLR (Chen et al., 2020), mode 910: two augmented views, projection head, NT-Xent.

Both views go through the backbone in ONE batch (BatchNorm sees 2N images, as in the
paper's global BN), the 2-layer MLP head maps pooled features to ``--feature_dim`` and
NT-Xent with temperature ``--tau`` contrasts them, with negatives from every process.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datasets.views import build_views
from losses.ntxent import NTXentLoss
from models.heads import ProjectionHead

LOSSES = ("NTXentLoss", "ntxent")
USES_AUG = True          # --aug / --aug_p choose the two views
SYNC_BN = True           # the loss couples a batch's images: SyncBatchNorm by default on several GPUs
TAU = 0.5                # NT-Xent temperature (--tau)
FEATURE_DIM = 128        # projection size (--feature_dim)


def embedding_std(z: Tensor) -> Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings.

    About 1/sqrt(d) for well-spread embeddings (0.088 for d=128); ~0 when the
    representation collapses. A detached 0-dim tensor: logging it costs no host sync.
    """
    zn = nn.functional.normalize(z.detach().float(), dim=1)
    return zn.std(dim=0).mean()


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int = 128, tau: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.out_dim, backbone.out_dim, feature_dim)
        self.criterion = NTXentLoss(temperature=tau)

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        xa, xb = views
        z = self.projector(self.backbone(torch.cat([xa, xb], dim=0)))
        za, zb = z.chunk(2, dim=0)
        loss = self.criterion(za, zb)
        return loss, {"emb_std": embedding_std(z)}


def build(args, opt, backbone: nn.Module) -> SimCLR:
    return SimCLR(backbone, feature_dim=args.feature_dim, tau=args.tau)


def make_transform(args, opt):
    aug = 5 if args.aug is None else args.aug
    plan = args.aug_p or "S5"
    return build_views(aug, plan, opt.input_size, opt.mean, opt.std, opt.rgb_index)
