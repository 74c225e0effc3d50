"""Set learners as benchmark methods (``mtlopt.set_learners``): one model for the whole front, its members
that model at the fixed test rays. ``phn-ls`` / ``phn-epo``: a hypernetwork generating the benchmark's
model; ``cosmos``: the benchmark's model with its first layer widened by K inputs, the ray appended to
the input (as K constant channels for images: the official transposed-CNN upsampler is not built);
``pamal``: K independently initialized copies of the benchmark's model, the model at a ray their convex
combination, a window of rays per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from mtlopt._options import choices
from mtlopt.distributed import resolve_group, world_size
from mtlopt.set_learners import (
    COSMOS,
    PHN,
    PaMaL,
    ParetoHypernetwork,
    PreferenceInput,
    WeightEnsemble,
    test_rays,
)
from mtlopt.set_learners.pamal import Ordering

from ..interfaces import MultiTaskModel, RunnerTasks
from ._base import MethodRunner, OptimizerSettings, Option, _non_negative, _positive_int, register


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


class _SetRunner(MethodRunner):
    """What the set learners' runners share: one process, one optimizer, the set as the model at the test
    rays, and the set method's own state in the checkpoint under ``state_key``."""

    produces_set = True
    state_key: ClassVar[str]
    learner: Any  # the set method (PHN, COSMOS, PaMaL): state_dict/load_state_dict
    rays: torch.Tensor
    optimizer: torch.optim.Optimizer
    modules_to_save: list[torch.nn.Module]

    def _one_process(self, what: str) -> None:
        if world_size(resolve_group("auto")) > 1:
            raise ValueError(f"{self.name} runs in one process ({what})")

    def _forward(self, x: torch.Tensor, ray: torch.Tensor) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.learner.steps += 1
        self._step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def predict(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError("a set method predicts per member: use predict_members")

    def predict_members(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [list(self._forward(x, ray)) for ray in self.rays]

    def modules(self) -> list[torch.nn.Module]:
        return self.modules_to_save

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), self.state_key: self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({key: state[key] for key in ("modules", "optimizers")})
        self.learner.load_state_dict(state[self.state_key])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rays": self.rays.tolist()}


class PHNRunner(_SetRunner):
    """A Pareto hypernetwork over the benchmark's model; the set is its targets at the test rays."""

    state_key = "phn"
    learner: PHN
    objective: ClassVar[str]

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self._one_process("the hypernetwork is one model for every ray")
        self.tasks = tasks
        self.target = make_model()
        self.hypernetwork = ParetoHypernetwork(
            self.target, self.num_tasks, hidden_dim=self.config["hidden-dim"]
        )
        self.learner = PHN(
            self.hypernetwork,
            objective=self.objective,  # type: ignore[arg-type]
            alpha=self.config["alpha"],
            seed=self.seed,
        )
        self.optimizer = optimizer.make(self.hypernetwork.parameters())
        self.modules_to_save = [self.hypernetwork, self.target]  # the target: its buffers and train/eval mode
        self.rays = test_rays(self.num_tasks, self.config["num-rays"])

    def train_step(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.scaler is not None:
            raise ValueError(f"{self.name} does not support float16 mixed precision (use bfloat16)")
        ray = self.learner.sample_ray()
        losses = torch.stack(self.tasks.losses(self.hypernetwork.call_target(ray, x), targets))
        result = self.learner.backward(losses, ray)
        self._step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": losses.detach(), "weights": result.weights, "ray": ray}

    def _forward(self, x: torch.Tensor, ray: torch.Tensor) -> Sequence[torch.Tensor]:
        return self.hypernetwork.call_target(ray, x)

    def weight_convention(self) -> str:
        return "1" if self.objective == "ls" else "K"


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


def widen_first_layer(model: torch.nn.Module, extra: int) -> torch.nn.Module:
    """Replace the model's first ``Linear`` or ``Conv2d`` (in ``named_modules`` order) by a freshly
    initialized one that takes ``extra`` more input features or channels (COSMOS's appended ray)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    if not layers:
        raise ValueError("cosmos needs a model whose first layer is an nn.Linear or nn.Conv2d")
    name, module = layers[0]
    weight = module.weight
    if isinstance(module, torch.nn.Linear):
        wider: torch.nn.Module = torch.nn.Linear(
            module.in_features + extra, module.out_features, module.bias is not None
        )
    else:
        wider = torch.nn.Conv2d(
            module.in_channels + extra,
            module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            module.stride,  # type: ignore[arg-type]
            module.padding,  # type: ignore[arg-type]
            module.dilation,  # type: ignore[arg-type]
            module.groups,
            module.bias is not None,
            module.padding_mode,
        )
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, wider.to(device=weight.device, dtype=weight.dtype))
    return model


@register
class COSMOSRunner(_SetRunner):
    """COSMOS over the benchmark's model, its first layer widened by K inputs for the ray."""

    name = "cosmos"
    description = (
        "COSMOS (Ruchte & Grabocka 2021): one model with the ray appended to its input, cosine penalty"
    )
    options = (
        _PHN_OPTIONS[0],
        Option(
            "alpha",
            1.2,
            "Dirichlet concentration of the training rays (official: 1.2)",
            parse=_positive_float,
        ),
        Option(
            "penalty", 2.0, "lambda, the cosine-similarity penalty (official: 2 on Multi-MNIST)", parse=float
        ),
    )
    state_key = "cosmos"
    learner: COSMOS

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self._one_process("one model for every ray")
        self.tasks = tasks
        self.model = PreferenceInput(widen_first_layer(make_model(), self.num_tasks), self.num_tasks)
        self.learner = COSMOS(
            self.num_tasks, penalty=self.config["penalty"], alpha=self.config["alpha"], seed=self.seed
        )
        self.optimizer = optimizer.make(self.model.parameters())
        self.modules_to_save = [self.model]
        self.rays = test_rays(self.num_tasks, self.config["num-rays"])

    def train_step(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        ray = self.learner.sample_ray()
        losses = torch.stack(self.tasks.losses(self.model(x, ray), targets))
        loss, cosine = self.learner.loss(losses, ray)
        self._backward_and_step(loss)
        return {"loss": losses.detach(), "cosine": cosine.detach(), "ray": ray}

    def _forward(self, x: torch.Tensor, ray: torch.Tensor) -> Sequence[torch.Tensor]:
        return self.model(x, ray)


@register
class PaMaLRunner(_SetRunner):
    """PaMaL over the benchmark's model: K independent initializations of it (one per task), the model at
    a ray the convex combination of their parameters; the set is that model at the test rays."""

    name = "pamal"
    description = (
        "PaMaL (Dimitriadis et al. 2023): a weight ensemble of one model per task, convex combinations "
        "trained on a window of Dirichlet rays"
    )
    options = (
        _PHN_OPTIONS[0],
        Option(
            "alpha",
            1.0,
            "Dirichlet concentration p of the training rays (official: 1; 2 UTKFace, 7 Cityscapes)",
            parse=_positive_float,
        ),
        Option(
            "window",
            3,
            "rays per step, W (official: 4 MultiMNIST, 2 Census, 3 otherwise)",
            parse=_positive_int,
        ),
        Option(
            "penalty",
            1.0,
            "lambda, the multi-forward regularization (official: 0 MultiMNIST, 5 Census, 2 MultiMNIST3, 1 others)",
            parse=_non_negative,
        ),
        Option("temperature", 1.0, "T inside the regularization (official: 1)", parse=_positive_float),
        Option(
            "ordering",
            "monotone",
            "window order of the regularization: monotone, or the official trainer's sort",
            choices=choices(Ordering),
        ),
        Option(
            "penalty-cap",
            "off",
            "add the penalty only while it is below the window's loss (official: on)",
            choices=("on", "off"),
        ),
    )
    state_key = "pamal"
    learner: PaMaL

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self._one_process("one ensemble for every ray")
        self.tasks = tasks
        models = [make_model() for _ in range(self.num_tasks)]  # independent initializations (official)
        self.target = models[0]
        self.ensemble = WeightEnsemble(models)
        self.learner = PaMaL(
            self.ensemble,
            num_tasks=self.num_tasks,
            window=self.config["window"],
            alpha=self.config["alpha"],
            penalty=self.config["penalty"],
            temperature=self.config["temperature"],
            ordering=self.config["ordering"],
            penalty_cap=self.config["penalty-cap"] == "on",
            seed=self.seed,
        )
        self.optimizer = optimizer.make(self.ensemble.parameters())
        self.modules_to_save = [self.ensemble, self.target]  # the target: its buffers and train/eval mode
        self.rays = test_rays(self.num_tasks, self.config["num-rays"])

    def train_step(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        rays = self.learner.sample_rays()
        losses = torch.stack(
            [torch.stack(self.tasks.losses(self.ensemble.call_target(ray, x), targets)) for ray in rays]
        )
        loss, reg = self.learner.loss(losses, rays)
        self._backward_and_step(loss)
        return {"loss": losses.detach().mean(0), "regularizer": reg.detach(), "ray": rays[0]}

    def _forward(self, x: torch.Tensor, ray: torch.Tensor) -> Sequence[torch.Tensor]:
        return self.ensemble.call_target(ray, x)

    def weight_convention(self) -> str:
        return "W"  # each of the window's W rays puts weight 1 on the tasks
