"""PyTorch Lightning with manual optimization trains bit-identically to the plain loop
(docs/guide/lightning.md says so). Skipped where lightning is not installed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import mtlopt

L = pytest.importorskip("lightning")

CASES = {
    "ew": (lambda: mtlopt.EW(), "none"),
    "mgda": (lambda: mtlopt.MGDA(), "shared"),
    "mgda-ub": (lambda: mtlopt.MGDA(), "features"),
}


def make_model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "encoder": nn.Sequential(nn.Linear(16, 8), nn.ReLU()),
            "heads": nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 2)]),
        }
    )


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(96, 16, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    )
    return DataLoader(data, batch_size=32)


def step(model: nn.ModuleDict, method: mtlopt.Method, where: str, x: torch.Tensor, y: torch.Tensor) -> None:
    z = model["encoder"](x)
    losses = [F.cross_entropy(model["heads"][0](z), y), F.cross_entropy(model["heads"][1](z), y % 2)]
    kwargs = {"shared": {"shared_params": model["encoder"]}, "features": {"features": z}, "none": {}}[where]
    mtlopt.backward(losses, method, **kwargs)


class Module(L.LightningModule):
    def __init__(self, method: mtlopt.Method, where: str) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = make_model()
        self.method, self.where = method, where

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        step(self.model, self.method, self.where, *batch)
        optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_manual_optimization_equals_the_plain_loop_bitwise(name: str) -> None:
    build, where = CASES[name]
    plain = make_model()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    method = build()
    for _ in range(2):
        for x, y in loader():
            optimizer.zero_grad()
            step(plain, method, where, x, y)
            optimizer.step()

    module = Module(build(), where)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader())
    for (key, a), b in zip(plain.state_dict().items(), module.model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs"
