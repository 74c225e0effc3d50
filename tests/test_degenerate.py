"""Degenerate inputs that once trained silently on a wrong answer: ``features=`` no loss reaches, a task
whose gradient is zero (MGDA put all its weight on it and stopped the encoder), and task names that
collide after ``str()``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import mtlopt
from reference import reference_min_norm


class Model(nn.Module):
    """An MLP encoder, an auxiliary branch the heads do not read, and three heads. Head 2 ("flat") reads
    its own input, not Z, unless told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.Tanh())
        self.aux = nn.Linear(8, 4)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))
        self.double()

    def forward(
        self, x: Tensor, y: Tensor, flat: str = "own input"
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z = self.encoder(x)
        aux = self.aux(z)
        out = [self.heads[0](z), self.heads[1](z)]
        if flat == "own input":  # the loss reaches neither the encoder nor Z
            out.append(self.heads[2](torch.ones_like(z)))
        elif flat == "dead relu":  # reaches Z, but its gradient vanishes (exactly zero)
            out.append(torch.relu(self.heads[2](z) - 1e6))
        else:
            out.append(self.heads[2](z))
        names = ["left", "right", "flat"]
        return z, aux, {n: (o.squeeze(1) - y[:, t]).pow(2).mean() for t, (n, o) in enumerate(zip(names, out))}


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(
        8, 3, generator=g, dtype=torch.float64
    )


# --- item 2: features= that no loss reaches ---------------------------------------------------------


@pytest.mark.parametrize("wrong", ["second forward", "another layer"])
@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
@pytest.mark.parametrize(
    "weighting", [mtlopt.MGDA(), mtlopt.MGDA(head_weighting="weighted"), mtlopt.PCGrad()]
)
def test_features_no_loss_reaches_are_refused_before_any_gradient_is_written(wrong, method, weighting):
    model = Model()
    x, y = data()
    _, aux, losses = model(x, y, flat="z")
    features = model.encoder(x) if wrong == "second forward" else aux
    with pytest.raises(
        ValueError, match=r"^no loss reaches features= \(a tensor of shape \(8, \d+\)\).*pass the"
    ):
        mtlopt.backward(losses, weighting, features=features, method=method)
    assert all(p.grad is None for p in model.parameters())


def test_the_features_error_is_one_line_and_names_the_workaround():
    model = Model()
    x, y = data()
    _, aux, losses = model(x, y, flat="z")
    with pytest.raises(ValueError) as caught:
        mtlopt.backward(losses, mtlopt.MGDA(), features=aux)
    message = str(caught.value)
    assert "\n" not in message
    assert "compile the encoder and the heads separately" in message


# --- item 4: a task with a zero gradient ------------------------------------------------------------


def per_task_flat(losses: list[Tensor], params: list[Tensor]) -> Tensor:
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(rows)


@pytest.mark.parametrize("flat", ["own input", "dead relu"])
@pytest.mark.parametrize(
    ("where", "method"),
    [
        ("shared", "batched"),
        ("shared", "loop"),
        ("features", "auto"),
        ("features", "loop"),
        ("features", "batched"),
    ],
)
def test_mgda_leaves_a_zero_gradient_task_out_and_trains_on_the_others(flat, where, method):
    model = Model()
    x, y = data()
    z, _, losses = model(x, y, flat=flat)
    items = list(losses.values())
    inputs = list(model.encoder.parameters()) if where == "shared" else [z]
    J = per_task_flat(items, inputs)
    assert torch.count_nonzero(J[2]) == 0 and torch.count_nonzero(J[:2]) > 0
    alpha, _ = reference_min_norm((J[:2] @ J[:2].T).numpy())  # the QP of the tasks that have a gradient
    kwargs = {"shared_params": model.encoder} if where == "shared" else {"features": z}

    with pytest.warns(
        UserWarning, match=r"the gradient of task 'flat' w\.r\.t\. the (shared parameters|features) is zero"
    ):
        result = mtlopt.backward(losses, mtlopt.MGDA(), method=method, **kwargs)

    assert result.weights[2].item() == 0.0
    torch.testing.assert_close(result.weights[:2], torch.from_numpy(alpha), rtol=0, atol=1e-7)
    assert result.diagnostics["zero_gradient_tasks"] == [2]
    d = result.weights @ J
    assert d.norm() > 0  # the encoder still trains
    assert torch.all(J[:2] @ d >= d @ d * (1 - 1e-9))  # KKT: -d descends for both tasks that have a gradient
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.encoder.parameters())


def test_zero_gradient_warning_is_given_once_per_task():
    model = Model()
    x, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            _, _, losses = model(x, y)
            mtlopt.backward(losses, mtlopt.MGDA(), shared_params=model.encoder)
    messages = [str(w.message) for w in caught if "is zero" in str(w.message)]
    assert len(messages) == 1 and "'flat'" in messages[0] and "\n" not in messages[0]


def test_zero_gradients_keep_is_the_literal_qp():
    G = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.0, -1.0, 3.0]], dtype=torch.float64)
    keep = mtlopt.MGDA(zero_gradients="keep").compute(G, torch.ones(3, dtype=torch.float64))
    assert keep.weights.tolist() == [1.0, 0.0, 0.0] and keep.diagnostics["min_norm"] == 0.0
    excluded = mtlopt.MGDA().compute(G, torch.ones(3, dtype=torch.float64))
    alpha, _ = reference_min_norm(G[1:, 1:].numpy())
    assert excluded.weights[0].item() == 0.0
    torch.testing.assert_close(excluded.weights[1:], torch.from_numpy(alpha), rtol=0, atol=1e-9)
    # Every gradient zero: nothing to solve, the weights stay on the simplex.
    none = mtlopt.MGDA().compute(torch.zeros(3, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert none.weights.tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="zero_gradients"):
        mtlopt.MGDA(zero_gradients="drop")  # type: ignore[arg-type]


def test_one_nonzero_task_gets_the_whole_weight_whatever_the_clip():
    G = torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    for clip in [(0.0, 1.0), (0.001, 0.999)]:
        assert mtlopt.MGDA(clip=clip)(G, torch.ones(2, dtype=torch.float64)).tolist() == [0.0, 1.0]


# --- weights_by_task(): names that collide after str() ---------------------------------------------


def test_task_names_that_collide_after_str_are_refused():
    w = nn.Parameter(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"distinct after str\(\): the keys 1 and '1' all give '1'"):
        mtlopt.backward({1: (w**2).sum(), "1": w.sum()}, mtlopt.EW())
    assert w.grad is None
    result = mtlopt.BackwardResult(["a", "a"], torch.zeros(2), torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="distinct"):
        result.weights_by_task()
