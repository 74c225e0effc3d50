"""torch.compile: every method under the two compile styles (the whole model, or the encoder and the heads
separately) either matches eager to float tolerance or raises the documented error (docs/compile.md).

The matrix runs with ``torch._functorch.config.donated_buffer = False``, the setting docs/compile.md
asks for; one test runs torch's default (donated buffers) and accepts a match or the documented error.
One compiled model per style serves every method of the matrix (its parameters are reset in place), so
that dynamo compiles once per style; each step checks that the graph went through a compiled backward,
so that a silent fall back to eager cannot pass for a match."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
import torch._functorch.config
from torch import Tensor, nn

import mtlopt
from mtlopt.gradients import choose_method

K = 2
METHODS = ["ew", "uw", "mgda", "mgda-ub", "pcgrad", "mao"]
STYLES = ["whole", "parts"]
# With the whole model compiled, Z is an output of one compiled node: no loss reaches it through autograd.
REFUSED = {("mgda-ub", "whole"): "no loss reaches features=.*compile the encoder and the heads separately"}
DONATED = r"^per-task gradients take one backward pass per task through a torch\.compile'd module.*donated_buffer = False"

Forward = Callable[[Tensor], tuple[Tensor, list[Tensor]]]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.encoder(x)
        return z, [head(z).squeeze(1) for head in self.heads]


INITIAL = [p.detach().clone() for p in Model().parameters()]


def build(style: str) -> tuple[Model, Forward]:
    model = Model()
    if style == "whole":
        return model, torch.compile(model)
    model.encoder = torch.compile(model.encoder)  # type: ignore[assignment]
    model.heads = nn.ModuleList(torch.compile(head) for head in model.heads)
    return model, model


compiled = functools.cache(build)  # the matrix's models, one per style


@pytest.fixture(autouse=True, scope="module")
def no_donated_buffers() -> Iterator[None]:
    with torch._functorch.config.patch(donated_buffer=False):
        yield


def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 5, generator=g), torch.randn(16, K, generator=g)


def through_compiled_backward(losses: list[Tensor]) -> bool:
    stack, seen = [loss.grad_fn for loss in losses], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "CompiledFunction" in type(node).__name__:
            return True
        stack.extend(child for child, _ in node.next_functions)
    return False


def step(
    name: str, model: Model, forward: Forward, method: str = "auto", compiled: bool = True
) -> list[Tensor]:
    """One step of the method; returns every parameter's .grad (for MAO: the stepped parameters)."""
    x, y = batch()
    with torch.no_grad():  # in place: the compiled graph keeps its parameters
        for p, value in zip(model.parameters(), INITIAL, strict=True):
            p.copy_(value)
    model.zero_grad(set_to_none=True)
    z, out = forward(x)
    losses = [(o - y[:, t]).pow(2).mean() for t, o in enumerate(out)]
    assert through_compiled_backward(losses) == compiled
    if name == "mao":
        groups = [
            {"params": model.encoder.parameters(), "shared": True},
            {"params": model.heads.parameters()},
        ]
        optimizer = mtlopt.MAO(groups, num_tasks=K, lr=1e-2)
        optimizer.backward(losses, method=method)  # type: ignore[arg-type]
        optimizer.step()
        return [p.detach().clone() for p in model.parameters()]
    weighting: mtlopt.Method
    extra: list[Tensor] = []
    if name == "uw":
        uw = mtlopt.UncertaintyWeighting(K)
        weighting, extra = uw, list(uw.parameters())
    else:
        weighting = {
            "ew": mtlopt.EW(),
            "mgda": mtlopt.MGDA(),
            "mgda-ub": mtlopt.MGDA(),
            "pcgrad": mtlopt.PCGrad(),
        }[name]
    where = {"mgda": {"shared_params": model.encoder}, "pcgrad": {"shared_params": model.encoder}}
    kwargs = {"features": z} if name == "mgda-ub" else where.get(name, {})
    mtlopt.backward(losses, weighting, method=method, **kwargs)  # type: ignore[arg-type]
    return [p.grad.detach().clone() for p in [*model.parameters(), *extra] if p.grad is not None]


def eager(name: str) -> list[Tensor]:
    model = Model()
    return step(name, model, model, compiled=False)


def assert_matches(got: list[Tensor], want: list[Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


# --- without torch.compile: the graph checks the compile tests rely on ----------------------------


class CompiledFunction(torch.autograd.Function):
    """Stands for a compiled module: its node is ``CompiledFunctionBackward``, as torch.compile's is."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class DonatingFunction(torch.autograd.Function):
    """A backward that refuses a kept graph with torch's donated-buffer message."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        raise RuntimeError(
            "This backward function was compiled with non-empty donated buffers which requires "
            "create_graph=False and retain_graph=False."
        )


def test_auto_takes_the_loop_through_a_compiled_node():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    out = mlp(torch.randn(5, 4))
    losses = [out[:, 0].mean(), out[:, 1].mean()]
    assert choose_method(losses, list(mlp.parameters())) == "batched"
    wrapped = CompiledFunction.apply(out)
    assert choose_method([wrapped[:, 0].mean(), wrapped[:, 1].mean()], list(mlp.parameters())) == "loop"


def test_a_donated_buffer_refusal_becomes_the_documented_error():
    w = nn.Parameter(torch.ones(3))
    h = DonatingFunction.apply(w * 2)
    with pytest.raises(ValueError, match=DONATED):
        mtlopt.backward([h[0], h[1]], mtlopt.MGDA(), shared_params=[w], method="loop")
    assert w.grad is None


# --- the matrix: 6 methods x 2 compile styles ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", METHODS)
def test_every_method_matches_eager_or_raises_the_documented_error(name, style):
    expected = eager(name)
    model, forward = compiled(style)
    refused = REFUSED.get((name, style))
    if refused is not None:
        with pytest.raises(ValueError, match=refused):
            step(name, model, forward)
        return
    assert_matches(step(name, model, forward), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mgda", "pcgrad", "mao"])
def test_batched_through_a_compiled_module_names_the_loop(name):
    model, forward = compiled("parts")
    with pytest.raises(
        ValueError, match=r"^method='batched' cannot differentiate through a torch\.compile'd"
    ):
        step(name, model, forward, method="batched")
    assert_matches(step(name, model, forward, method="loop"), eager(name))


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_with_donated_buffers_a_method_matches_eager_or_raises_the_documented_error(style):
    """torch's default: a compiled backward first run without a kept graph (here an EW step) donates
    its saved tensors; methods that take one pass per task through it then raise the documented error."""
    torch._dynamo.reset()  # compile afresh under this setting
    try:
        with torch._functorch.config.patch(donated_buffer=True):
            model, forward = build(style)
            step("ew", model, forward)
            for name in METHODS:
                if (name, style) in REFUSED:
                    continue
                try:
                    got = step(name, model, forward)
                except ValueError as error:
                    assert name in ("mgda", "pcgrad", "mao"), f"{name}: {error}"
                    assert "donated_buffer = False" in str(error)
                    continue
                assert_matches(got, eager(name))
    finally:
        torch._dynamo.reset()
