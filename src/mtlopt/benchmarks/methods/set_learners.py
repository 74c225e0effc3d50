"""Set learners as benchmark methods: one hypernetwork for the whole front (``phn-ls``, ``phn-epo``),
its members the target models generated for the fixed test rays (``mtlopt.set_learners``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from mtlopt.distributed import resolve_group, world_size
from mtlopt.set_learners import PHN, ParetoHypernetwork, test_rays

from ..interfaces import MultiTaskModel, RunnerTasks
from ._base import MethodRunner, OptimizerSettings, Option, _positive_int, register


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a number > 0, got {text}")
    return value


_PHN_OPTIONS = (
    Option(
        "num-rays",
        None,
        "test rays, one member each (default: 25 for two tasks, beyond the smallest Das–Dennis set of >= 25)",
        parse=_positive_int,
    ),
    Option(
        "alpha", 0.2, "Dirichlet concentration of the training rays (official: 0.2)", parse=_positive_float
    ),
    Option("hidden-dim", 100, "width of the hypernetwork's ray MLP (official: 100)", parse=_positive_int),
)


class PHNRunner(MethodRunner):
    """A Pareto hypernetwork over the benchmark's model; the set is its targets at the test rays."""

    produces_set = True
    objective: ClassVar[str]

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        if world_size(resolve_group("auto")) > 1:
            raise ValueError(f"{self.name} runs in one process (the hypernetwork is one model for every ray)")
        self.tasks = tasks
        self.target = make_model()
        self.hypernetwork = ParetoHypernetwork(
            self.target, self.num_tasks, hidden_dim=self.config["hidden-dim"]
        )
        self.phn = PHN(
            self.hypernetwork,
            objective=self.objective,  # type: ignore[arg-type]
            alpha=self.config["alpha"],
            seed=self.seed,
        )
        self.optimizer = optimizer.make(self.hypernetwork.parameters())
        self.rays = test_rays(self.num_tasks, self.config["num-rays"])

    def train_step(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.scaler is not None:
            raise ValueError(f"{self.name} does not support float16 mixed precision (use bfloat16)")
        ray = self.phn.sample_ray()
        losses = torch.stack(self.tasks.losses(self.hypernetwork.call_target(ray, x), targets))
        result = self.phn.backward(losses, ray)
        self._step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": losses.detach(), "weights": result.weights, "ray": ray}

    def predict(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError("a set method predicts per member: use predict_members")

    def predict_members(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [list(self.hypernetwork.call_target(ray, x)) for ray in self.rays]

    def modules(self) -> list[torch.nn.Module]:
        return [self.hypernetwork, self.target]  # the target: its buffers and its train/eval mode

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phn": self.phn.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({key: state[key] for key in ("modules", "optimizers")})
        self.phn.load_state_dict(state["phn"])

    def weight_convention(self) -> str:
        return "1" if self.objective == "ls" else "K"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rays": self.rays.tolist()}


@register
class PHNLSRunner(PHNRunner):
    name = "phn-ls"
    description = "Pareto hypernetwork (Navon et al. 2021), linear scalarization on Dirichlet rays"
    options = _PHN_OPTIONS
    objective = "ls"


@register
class PHNEPORunner(PHNRunner):
    name = "phn-epo"
    description = "Pareto hypernetwork (Navon et al. 2021), EPO weights on Dirichlet rays"
    options = _PHN_OPTIONS
    objective = "epo"
