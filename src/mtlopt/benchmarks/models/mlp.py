"""An MLP for QM9-sized input (the speed suite's regression model)."""

from __future__ import annotations

from torch import nn

from ..interfaces import MultiTaskModel


class QM9MLP(MultiTaskModel):
    """An MLP for QM9-sized input: 435 → 256 → 256 → 128 (ReLU), one Linear(128 → 1) head per task.

    435 values: the upper triangle (with the diagonal) of the Coulomb matrix of a 29-atom molecule, the
    largest in QM9, a standard fixed-size descriptor of a molecule.
    """

    input_dim = 435

    def __init__(self, num_tasks: int = 11) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(self.input_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(128, 1) for _ in range(num_tasks))
