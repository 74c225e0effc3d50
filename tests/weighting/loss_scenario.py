"""One fixed small training run for the loss-level methods, shared by the peer-agreement tests and by
``tools/record_loss_peers.py`` (which records the peers' values into ``peer_golden_loss.json``).

A float32 model (a tanh encoder and K linear heads) trains with SGD on fixed batches; every step
records the weights the method applies (∂objective/∂L_t) and the gradient of every parameter. The
loop hooks are called where the methods need them: ``new_epoch`` at each epoch end (DWA, STCH) and
FAMO's ``update`` with the losses recomputed on the same batch after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

K = 3
STEPS_PER_EPOCH = 2
EPOCHS = 6
STEPS = STEPS_PER_EPOCH * EPOCHS
LR = 0.05
RLW_SEED = 5


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 6)
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(K))

    def losses(self, step: int) -> list[Tensor]:
        x, y = batch(step)
        z = torch.tanh(self.encoder(x))
        return [((head(z).squeeze(1) - y[:, t]) ** 2).mean() + 0.1 for t, head in enumerate(self.heads)]


_DATA: dict[str, Tensor] = {}


def batch(step: int) -> tuple[Tensor, Tensor]:
    if not _DATA:
        g = torch.Generator().manual_seed(1)
        _DATA["x"] = torch.randn(32, 4, generator=g)
        _DATA["y"] = torch.randn(32, K, generator=g) * torch.tensor([1.0, 3.0, 0.3]) + 0.5
    rows = slice((step % 4) * 8, (step % 4) * 8 + 8)
    return _DATA["x"][rows], _DATA["y"][rows]


def model() -> Model:
    torch.manual_seed(0)
    return Model()


def flat_grads(params: list[Tensor]) -> list[float]:
    return torch.cat([p.grad.reshape(-1) for p in params]).tolist()  # type: ignore[union-attr]


def run(
    step_fn: Callable[[list[Tensor]], Tensor],
    *,
    extra_params: list[Tensor] = (),  # type: ignore[assignment]
    after_step: Callable[[Model, int], None] | None = None,
    end_epoch: Callable[[], None] | None = None,
    net: Model | None = None,
) -> dict[str, list[list[float]]]:
    """Train STEPS steps; ``step_fn(losses)`` backpropagates and returns the applied weights (K,)."""
    net = model() if net is None else net
    params = [*net.parameters(), *extra_params]
    optimizer = torch.optim.SGD(params, lr=LR)
    weights, grads = [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        w = step_fn(net.losses(step))
        weights.append([float(v) for v in w])
        grads.append(flat_grads(params))
        optimizer.step()
        if after_step is not None:
            after_step(net, step)
        if end_epoch is not None and (step + 1) % STEPS_PER_EPOCH == 0:
            end_epoch()
    return {"weights": weights, "grads": grads}


def scalarizer_step(scalarize: Callable[[Tensor], Tensor]) -> Callable[[list[Tensor]], Tensor]:
    """A step of a peer that maps the loss vector to a scalar: weights = ∂scalar/∂L, then backward."""

    def step(losses: list[Tensor]) -> Tensor:
        vector = torch.stack(losses)
        total = scalarize(vector)
        (weights,) = torch.autograd.grad(total, vector, retain_graph=True)
        total.backward()
        return weights

    return step


def hooked_step(backward: Callable[[Tensor], Any]) -> Callable[[list[Tensor]], Tensor]:
    """A step of a peer that calls ``.backward()`` itself: the weights are read by a hook on L."""

    def step(losses: list[Tensor]) -> Tensor:
        vector = torch.stack(losses)
        seen: list[Tensor] = []
        vector.register_hook(lambda g: seen.append(g.detach().clone()))
        backward(vector)
        return seen[0]

    return step


def run_mtlopt(name: str) -> dict[str, list[list[float]]]:
    """The scenario with mtlopt's method of that name (its peer-agreement configuration)."""
    import mtlopt

    net = model()
    extra: list[Tensor] = []
    after_step = end_epoch = None
    method: Any
    if name == "dwa":
        method = mtlopt.DWA(temperature=2.0)
        end_epoch = method.new_epoch
    elif name == "rlw":
        method = mtlopt.RLW(seed=RLW_SEED)
    elif name == "gls":
        method = mtlopt.GLS()
    elif name == "imtl-l":
        method = mtlopt.IMTLL(K)
        extra = list(method.parameters())
    elif name == "famo":
        method = mtlopt.FAMO(K, lr=0.025, weight_decay=1e-3)

        def after_step(net: Model, step: int) -> None:
            with torch.no_grad():
                method.update(torch.stack(net.losses(step)))

    elif name == "stch-none":
        method = mtlopt.STCH(0.5, transform="none", preference=[1.0 / K] * K)
    else:
        raise ValueError(f"no scenario for {name!r}")

    def step(losses: list[Tensor]) -> Tensor:
        return mtlopt.backward(losses, method).weights

    return run(step, extra_params=extra, after_step=after_step, end_epoch=end_epoch, net=net)


# method → the peers recorded for it (tools/record_loss_peers.py)
PEERS: dict[str, tuple[str, ...]] = {
    "dwa": ("torchjd", "libmtl"),
    "rlw": ("torchjd", "libmtl"),
    "gls": ("torchjd", "libmtl"),
    "imtl-l": ("torchjd",),
    "famo": ("torchjd", "official"),
    "stch-none": ("torchjd",),
}
