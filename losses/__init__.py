"""Loss functions: NT-Xent (SimCLR, distributed-aware) and the pretext losses."""
from losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss"]
