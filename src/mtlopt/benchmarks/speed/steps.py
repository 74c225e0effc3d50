"""mtlopt's methods as the speed suite times them: built by the benchmark method registry
(:mod:`mtlopt.benchmarks.methods`), so a method is timed exactly as ``mtlopt train`` runs it, on the
configuration's model and batch with the configuration's Adam; plus the two references that are not
methods (``forward-only``, ``ew-plain``).

The speed suite's own settings, where they are not a runner's defaults: ``mao`` without its balance
diagnostic; the populations with transfer of every parameter (``Transfer()``), random preference vectors
inside the simplex, and ``vectorize`` as the row says; ``pmtl`` and ``epo`` with two-task rays strictly
inside the quadrant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..methods import METHODS, MethodRunner, OptimizerSettings, get_method
from .setups import RunnerData, Setup, Step


def registered_methods() -> dict[str, type[MethodRunner]]:
    """Every method of the benchmark registry (``mtlopt train --method``)."""
    return dict(METHODS)


def build_runner(s: Setup, runner: type[MethodRunner], options: dict[str, Any] | None = None) -> MethodRunner:
    """``runner`` built on a copy of the configuration's template, with the configuration's Adam."""
    method = runner(options or {}, s.tasks, seed=s.seed)
    method.build(s.model, OptimizerSettings("adam", lr=s.lr), None, RunnerData(s))
    return method


def _modules(method: MethodRunner) -> list[nn.Module]:
    """The modules whose buffers a step keeps (the runner's, its weighting's, a looped population's)."""
    population = getattr(method, "population", None)
    if population is not None:
        return [] if population.vectorized else list(population.models)
    weighting = getattr(method, "_weighting", None)  # e.g. uncertainty weighting's log-variances
    return [
        *method.modules(),
        *([weighting] if isinstance(weighting, nn.Module) else []),
    ]


def runner_step(
    name: str, options: dict[str, Any] | None = None, **overrides: Any
) -> Callable[[Setup], Step]:
    """The registered method ``name`` (with ``options``; ``overrides`` replace class attributes of its
    runner) as a :class:`Step`: one ``train_step`` on the configuration's batch."""

    def build(s: Setup) -> Step:
        runner = get_method(name)
        if overrides:
            runner = type(runner.__name__, (runner,), dict(overrides))
        settings = {key: value(s) if callable(value) else value for key, value in (options or {}).items()}
        method = build_runner(s, runner, settings)
        # A method that reads several batches per step (MoDo, SDMGrad) gets the configuration's batch
        # again as each extra one: the same work as independent batches of that size.
        extra = [(s.x, s.y)] * (method.batches_per_step - 1)
        return Step(
            (lambda: method.train_step_with_extra(s.x, s.y, extra))
            if extra
            else (lambda: method.train_step(s.x, s.y)),
            method.optimizers(),
            _modules(method),
            [s.x, s.y],
        )

    return build


def forward_only(s: Setup) -> Step:
    model = s.model()
    optimizer = s.optimizer(model.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        s.forward(model)

    return Step(run, [optimizer], [model], [s.x, s.y])


def ew_plain(s: Setup) -> Step:
    model = s.model()
    optimizer = s.optimizer(model.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = s.forward(model)
        torch.stack(losses).mean().backward()
        optimizer.step()

    return Step(run, [optimizer], [model], [s.x, s.y])


def _random_preferences(self: MethodRunner, count: int) -> Tensor:
    """Preference vectors drawn inside the simplex (seeded): no member ignores a task."""
    generator = torch.Generator().manual_seed(self.seed)
    rows = 1.0 + torch.rand(count, self.num_tasks, generator=generator, dtype=torch.float64)
    return rows / rows.sum(dim=1, keepdim=True)


def population(vectorize: str) -> Callable[[Setup], Step]:
    """MTGD's population: ``Population`` with ``Transfer()`` (every parameter), ``s.population`` members."""
    return runner_step(
        "mtgd",
        {"num-models": lambda s: s.population, "transfer-params": "all"},
        vectorize=vectorize,
        member_preferences=_random_preferences,
    )


INTERIOR_RAYS = (
    1e-4 * math.pi / 2,
    (1 - 1e-4) * math.pi / 2,
)  # two-task rays strictly inside (EPO: r > 0)


def pareto_population(name: str) -> Callable[[Setup], Step]:
    """Pareto MTL or EPO: ``s.population`` members, one per ray."""
    return runner_step(name, {"num-models": lambda s: s.population}, angles=INTERIOR_RAYS)


def epoch_step(name: str, pre_steps: int = 0) -> Callable[[Setup], Step]:
    """A method with epoch boundaries (DWA, STCH): every step is a one-step epoch, the runner's
    ``on_epoch_start`` hook called before it, so a step carries the hook's bookkeeping every time (an
    upper bound on its share of a real epoch). ``pre_steps`` untimed steps in the build bring the
    method past its warm-up epochs, so the timed steps take its steady-state branch."""

    def build(s: Setup) -> Step:
        method: Any = build_runner(s, get_method(name))
        epoch = [0]

        def run() -> Any:
            method.on_epoch_start(epoch[0])
            epoch[0] += 1
            return method.train_step(s.x, s.y)

        for _ in range(pre_steps):
            run()
        return Step(run, method.optimizers(), _modules(method), [s.x, s.y])

    return build


def famo_without_update(s: Setup) -> Step:
    """FAMO's step without its loop hook: no recomputation of the losses after the optimizer step and
    no logit update (the logits stay at 0), so the difference to ``famo`` is the hook's price."""
    from ..methods.weightings import SingleModelRunner

    return runner_step("famo", train_step=SingleModelRunner.train_step)(s)
