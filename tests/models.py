"""Small multi-task models for the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class CountingEncoder(nn.Module):
    """conv → BatchNorm → ReLU → (dropout) → linear; counts its forward calls."""

    def __init__(self, dropout: float = 0.0, width: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 6 * 6, width)
        self.forward_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_calls += 1
        h = F.relu(self.bn(self.conv(x)))
        return F.relu(self.fc(self.dropout(h.flatten(1))))


class MultiTaskNet(nn.Module):
    """A shared encoder and K classification heads (two layers each)."""

    def __init__(self, num_tasks: int = 3, dropout: float = 0.0, width: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.encoder = CountingEncoder(dropout, width)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))
            for _ in range(num_tasks)
        )

    def losses(self, z: Tensor, y: Tensor) -> list[Tensor]:
        return [F.cross_entropy(head(z), y[:, t]) for t, head in enumerate(self.heads)]


def make_problem(num_tasks: int = 3, seed: int = 0, dropout: float = 0.0, batch: int = 16):
    torch.manual_seed(seed)
    model = MultiTaskNet(num_tasks, dropout).double()
    x = torch.randn(batch, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (batch, num_tasks))
    return model, x, y
