"""Set methods: a population of models, one per preference vector or ray, trained as one
``mtlopt.Population`` (linear-scalarization sweep, MTGD, Pareto MTL, EPO)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import mtlopt
from mtlopt import population
from mtlopt._options import choices
from mtlopt.distributed import resolve_group, world_size
from mtlopt.weighting import epo, pmtl

from ..interfaces import MultiTaskModel, RunnerTasks
from ._base import MethodRunner, OptimizerSettings, Option, _fraction, _non_negative, _positive_int, register


def _count(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def auto_count(num_tasks: int, wanted: int = 5) -> int:
    """``--num-models auto``: 5 for two tasks; beyond, the smallest Das–Dennis lattice size >= 5
    (6 for three tasks, 10 for four, K from five tasks on), so that the default runs for any K."""
    if num_tasks <= 2:
        return wanted
    divisions = 1
    while math.comb(divisions + num_tasks - 1, num_tasks - 1) < wanted:
        divisions += 1
    return math.comb(divisions + num_tasks - 1, num_tasks - 1)


_COUNT_HELP = "(auto: 5 for two tasks, else the smallest Das–Dennis lattice size >= 5: 6 for 3 tasks)"
_SET_OPTIONS = (
    Option(
        "num-models",
        "auto",
        f"models in the set, one per evenly spaced preference vector {_COUNT_HELP}",
        parse=_count,
    ),
    Option("scalarization", "linear", "scalarization of each subproblem", choices(population.Scalarization)),
    Option(
        "preferences",
        "ends",
        "evenly spaced vectors including the ends such as (1, 0), or moved into the interior "
        "((i + 1/2) / K for two tasks)",
        ("ends", "interior"),
    ),
)


class PopulationRunner(MethodRunner):
    """A set of models, one per preference vector, trained as one ``mtlopt.Population``."""

    produces_set = True
    vectorize: ClassVar[str] = "auto"  # the Population's vectorize (the speed suite times "always" too)

    def transfer(self) -> Any:
        return None

    def member_count(self) -> int:
        count = self.config["num-models"]
        return auto_count(self.num_tasks) if count == "auto" else count

    def member_preferences(self, count: int) -> Tensor:
        """The (count, m) preference vectors of the members (on the simplex)."""
        return mtlopt.preference_vectors(
            self.num_tasks, count, interior=self.config.get("preferences", "ends") == "interior"
        )

    def weightings(self, members: range) -> list[mtlopt.GramianWeighting] | None:
        """Per-member weightings for the given member indices (None: the scalarization)."""
        return None

    def initial_models(self, make_model: Callable[[], nn.Module], count: int) -> list[nn.Module]:
        """The members before training: each with its own initialization."""
        return [make_model() for _ in range(count)]

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self.tasks = tasks
        count = self.member_count()
        models = self.initial_models(make_model, count)  # every rank builds the same K models
        group = resolve_group("auto")
        world, rank = world_size(group), (torch.distributed.get_rank(group) if group is not None else 0)
        if count % world:
            raise ValueError(
                f"--num-models {count} must be a multiple of the {world} processes (members are split among them)"
            )
        self.preferences = self.member_preferences(count)
        local = range(rank * count // world, (rank + 1) * count // world)
        self.population = mtlopt.Population(
            models[local.start : local.stop],
            self.preferences,
            optimizer.make,
            scalarization=self.config.get("scalarization", "linear"),  # unused with weightings
            transfer=self.transfer(),
            shared=lambda name: name.startswith("encoder."),
            total_steps=total_steps,
            vectorize=self.vectorize,  # type: ignore[arg-type]
            scaler=self.scaler,
            weightings=self.weightings(local),
        )

    def train_step(self, x, targets):
        def task_losses(outputs, y):
            return torch.stack(self.tasks.losses(outputs, y))

        result = self.population.step(x, targets, task_losses)
        return {"member_loss": result.losses.reshape(-1), "transfer_strength": torch.tensor(result.strength)}

    def predict(self, x):
        raise NotImplementedError("a set method predicts per member: use predict_members")

    def predict_members(self, x):
        return self.population.forward(x)

    def set_training(self, mode: bool) -> None:
        self.population.train(mode)

    def modules(self):
        return []

    def optimizers(self):
        return [self.population.optimizer]

    def state_dict(self):
        return {"population": self.population.state_dict()}

    def load_state_dict(self, state):
        self.population.load_state_dict(state["population"])

    def describe(self):
        return {
            **super().describe(),
            "preferences": self.preferences.tolist(),
            "transfer": dataclasses.asdict(self.population.transfer),
            "vectorized": self.population.vectorized,
        }


@register
class LSSweepRunner(PopulationRunner):
    name = "ls-sweep"
    description = "linear-scalarization sweep: one independent model per preference vector (no transfer)"
    options = _SET_OPTIONS


@register
class MTGDRunner(PopulationRunner):
    name = "mtgd"
    description = "MTL with multi-task optimization (Bai et al. 2024): one model per preference, trained jointly with parameter transfer"
    options = (
        *_SET_OPTIONS,
        Option(
            "transfer-strength",
            mtlopt.Transfer().strength,
            "rho: weight taken from the neighbours at each transfer",
            parse=_fraction,
        ),
        Option(
            "transfer-neighbours", 2, "most similar subproblems each model mixes with", parse=_positive_int
        ),
        Option(
            "transfer-form",
            "normalized",
            "W from the preference similarities: each member takes rho split over its neighbours, or "
            "MGD's rho*c/(1+c) from each (no exchange between orthogonal preferences)",
            choices(population.TransferForm),
        ),
        Option("transfer-schedule", "constant", "rho over training", choices(population.Schedule)),
        Option("transfer-every", 1, "steps between transfers", parse=_positive_int),
        Option(
            "transfer-params",
            "shared",
            "parameters transferred: the shared trunk (as the MGD code) or all",
            choices(population.TransferParameters)[::-1],
        ),
        Option(
            "init",
            "independent",
            "members' initial weights: each its own, or all the first member's (transfer then mixes "
            "corresponding units)",
            ("independent", "shared"),
        ),
    )

    def initial_models(self, make_model, count):
        models = super().initial_models(make_model, count)  # the same random draws either way
        if self.config["init"] == "shared":
            for model in models[1:]:
                model.load_state_dict(models[0].state_dict())
        return models

    def uses_run_length(self) -> bool:
        return self.config["transfer-schedule"] != "constant"  # rho decays over total_steps

    def transfer(self):
        return mtlopt.Transfer(
            strength=self.config["transfer-strength"],
            neighbours=self.config["transfer-neighbours"],
            form=self.config["transfer-form"],
            schedule=self.config["transfer-schedule"],
            every=self.config["transfer-every"],
            parameters=self.config["transfer-params"],
        )


# Each member's whole model is its weighting's shared parameters (as in both official codes), so its
# heads get w_t grad L_t: the weightings' head_weighting has nothing to act on and is not offered.
_RAY_SET_OPTIONS = (
    Option("num-models", "auto", f"models in the set, one per preference ray {_COUNT_HELP}", parse=_count),
)


def _rays(num_tasks: int, count: int, min_angle: float, max_angle: float) -> Tensor:
    """Unit rays: evenly spaced angles for two tasks, normalized simplex points otherwise."""
    if num_tasks == 2:
        return mtlopt.circle_preferences(count, min_angle, max_angle)
    points = mtlopt.preference_vectors(num_tasks, count).clamp_min(1e-4)
    return points / points.norm(dim=1, keepdim=True)


class RaySetRunner(PopulationRunner):
    """One member per preference ray, each trained with its own gradient-based weighting."""

    angles: ClassVar[tuple[float, float]] = (0.0, 0.5 * math.pi)

    def rays(self, count: int) -> Tensor:
        return _rays(self.num_tasks, count, *self.angles)

    def member_preferences(self, count):
        rays = self.rays(count)
        return rays / rays.sum(dim=1, keepdim=True)

    def describe(self):
        return {**super().describe(), "rays": self.rays(self.member_count()).tolist()}


@register
class ParetoMTLRunner(RaySetRunner):
    name = "pmtl"
    description = "Pareto MTL (Lin et al. 2019): one model per preference region, constrained MGDA steps"
    options = (
        *_RAY_SET_OPTIONS,
        Option(
            "warmup-epochs",
            None,
            "cap on the feasibility phase in epochs (default: until feasible; official code: 2)",
            parse=_non_negative,
        ),
        Option(
            "weight-scale",
            "none",
            "main-phase weights as in the paper or rescaled to sum |w| = K (official code)",
            choices(pmtl.WeightScale),
        ),
    )

    def weightings(self, members):
        rays = self.rays(self.member_count())
        warmup = self.config["warmup-epochs"]
        steps = None if warmup is None else round(warmup * self.steps_per_epoch)
        return [
            mtlopt.ParetoMTL(
                rays,
                k,
                warmup_steps=steps,
                weight_scale=self.config["weight-scale"],
            )
            for k in members
        ]


@register
class EPORunner(RaySetRunner):
    name = "epo"
    description = (
        "EPO search (Mahapatra & Rajan 2020): one model per preference ray, exact-Pareto-optimal steps"
    )
    options = (
        *_RAY_SET_OPTIONS,
        Option("descent", "restricted", "descent-mode linear program", choices(epo.Descent)),
        Option("eps", 1e-4, "non-uniformity threshold between balance and descent mode", parse=float),
        Option(
            "weight-scale",
            "one",
            "sum of the weights: 1 (paper) or the number of tasks (official MultiMNIST script)",
            choices(epo.WeightScale),
        ),
    )
    # The official MultiMNIST runs: rays strictly inside the quadrant (EPO needs r > 0).
    angles = (1e-4 * 0.5 * math.pi, (1.0 - 1e-4) * 0.5 * math.pi)

    def weightings(self, members):
        rays = self.rays(self.member_count())
        return [
            mtlopt.EPO(
                rays[k],
                eps=self.config["eps"],
                descent=self.config["descent"],
                weight_scale=self.config["weight-scale"],
            )
            for k in members
        ]
