"""The QM9 model: a message-passing neural network (MPNN) with one linear head per target.

Justin Gilmer et al., "Neural Message Passing for Quantum Chemistry", ICML 2017: edge-network message
passing (``NNConv``) with a GRU update for three steps, a Set2Set readout, then a shared linear layer; the
architecture of the QM9 experiments of Nash-MTL, FAMO and LibMTL (``dim`` = 64). Built on PyTorch
Geometric's layers (``torch_geometric``, part of ``mtlopt[bench]``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..data.qm9 import EDGE_FEATURES, NODE_FEATURES, TARGETS, GraphBatch
from ..interfaces import MultiTaskModel


class MPNNEncoder(nn.Module):
    """Node embedding → ``steps`` × (NNConv, ReLU, GRU) → Set2Set → Linear(2·dim → dim) + ReLU."""

    def __init__(self, dim: int = 64, steps: int = 3, readout_steps: int = 3) -> None:
        super().__init__()
        from torch_geometric.nn import NNConv, Set2Set

        self.steps = steps
        self.embed = nn.Linear(NODE_FEATURES, dim)
        edge_network = nn.Sequential(nn.Linear(EDGE_FEATURES, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, edge_network, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.readout = Set2Set(dim, processing_steps=readout_steps)
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, graph: GraphBatch) -> Tensor:
        out = F.relu(self.embed(graph.x))
        hidden = out.unsqueeze(0)
        for _ in range(self.steps):
            message = F.relu(self.conv(out, graph.edge_index, graph.edge_attr))
            out, hidden = self.gru(message.unsqueeze(0), hidden)
            out = out.squeeze(0)
        pooled = self.readout(out, graph.batch, dim_size=graph.num_graphs)
        return F.relu(self.project(pooled))


class QM9MPNN(MultiTaskModel):
    """The shared MPNN encoder and one Linear(dim → 1) head per QM9 target (outputs of shape (B,))."""

    def __init__(self, dim: int = 64, num_tasks: int = len(TARGETS)) -> None:
        super().__init__()
        self.encoder = MPNNEncoder(dim)
        self.heads = nn.ModuleList(_Scalar(dim) for _ in range(num_tasks))


class _Scalar(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z).squeeze(-1)
