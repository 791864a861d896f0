"""Loss functions: NT-Xent (SimCLR, distributed-aware) and the losses of the other methods."""
from losses.barlow import BarlowTwinsLoss
from losses.byol import BYOLLoss
from losses.dino import DINOLoss
from losses.infonce import InfoNCELoss, MoCoV3Loss
from losses.mae import MAELoss
from losses.ntxent import NTXentLoss
from losses.simsiam import SimSiamLoss
from losses.vicreg import VICRegLoss

__all__ = ["NTXentLoss", "InfoNCELoss", "MoCoV3Loss", "BYOLLoss", "SimSiamLoss", "BarlowTwinsLoss", "VICRegLoss", "DINOLoss", "MAELoss"]
