"""The LeNets of the MultiMNIST family (Sener & Koltun 2018; Pareto MTL 2019)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..interfaces import MultiTaskModel


class SenerLeNet(MultiTaskModel):
    """The MultiMNIST LeNet of Sener & Koltun (2018), 28×28 input.

    Shared: conv5(1→10) – maxpool2 – ReLU – conv5(10→20) – maxpool2 – ReLU – FC 320→50 – ReLU.
    Heads: FC 50→50 – ReLU – FC 50→10. 27,450 parameters with two heads.

    ``dropout`` > 0 adds the official code's dropout (after the second convolution, and between the two
    head layers); the paper describes the network without it, so the default is 0.
    """

    def __init__(self, num_tasks: int = 2, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Dropout(dropout), nn.Linear(50, num_classes))
            for _ in range(num_tasks)
        )


class PMTLLeNet(MultiTaskModel):
    """The LeNet of Pareto MTL (Lin et al. 2019) and its successors, 36×36 input.

    Shared: conv9(1→10) – maxpool2 – ReLU – conv5(10→20) – maxpool2 – ReLU – FC 500→50 – ReLU.
    Heads: FC 50→10. 31,910 parameters with two heads.
    """

    def __init__(self, num_tasks: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 9), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(500, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(50, num_classes) for _ in range(num_tasks))


def cross_entropy_losses(outputs: list[Tensor], targets: Tensor) -> list[Tensor]:
    """Mean cross-entropy of each task's logits against column t of ``targets``."""
    return [F.cross_entropy(output, targets[:, t]) for t, output in enumerate(outputs)]
