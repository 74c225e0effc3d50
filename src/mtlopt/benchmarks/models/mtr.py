"""The multi-target regression models: a shared MLP and one linear head (one output) per target."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..interfaces import MultiTaskModel


def _scalar_head(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 1), nn.Flatten(0))  # (B, 1) -> (B,)


class MTRMLP(MultiTaskModel):
    """The ``standard`` protocol's model: Linear–ReLU layers of ``hidden`` widths shared, a Linear(→ 1)
    head per target."""

    def __init__(self, inputs: int, num_tasks: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList(_scalar_head(width) for _ in range(num_tasks))


class EPOFNN(MultiTaskModel):
    """EPO's multi-target regression FNN (official ``mtr/model_fnn.py``): Linear layers halving the width
    (``n → n // 2``) while it exceeds the number of targets, each followed by tanh, then one linear map
    to the targets, here split into a Linear(→ 1) head per target. For rf1: 64 → 32 → 16 → 8 (tanh),
    8 heads. PyTorch's default initialization (EPO's rescaled Xavier init is not called)."""

    def __init__(self, inputs: int, num_tasks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        while width > num_tasks:
            layers += [nn.Linear(width, width // 2), nn.Tanh()]
            width //= 2
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList(_scalar_head(width) for _ in range(num_tasks))
