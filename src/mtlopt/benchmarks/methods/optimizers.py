"""Methods that schedule their own optimizer steps: single-task learning (one model per task),
alternating task-group steps (Pascal et al. 2021) and MAO's per-task adaptive optimizer (Hervella et al.
2024)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import mtlopt
from mtlopt import alternating, mao
from mtlopt._options import choices

from ..interfaces import MultiTaskModel, RunnerTasks
from ._base import MethodRunner, OneModelRunner, OptimizerSettings, Option, _positive_int, register


@register
class STLRunner(MethodRunner):
    """K independent models; model t is trained on task t alone and predicts task t."""

    name = "stl"
    description = "single-task learning: one model per task, each trained on its own loss"

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self.tasks = tasks
        self.models = nn.ModuleList(make_model() for _ in range(self.num_tasks))
        self._optimizers = [optimizer.make(model.parameters()) for model in self.models]

    def train_step(self, x, targets):
        losses = []
        for t, (model, optimizer) in enumerate(zip(self.models, self._optimizers)):
            optimizer.zero_grad(set_to_none=True)
            loss = self.tasks.task_loss(t, model.heads[t](model.encoder(x)), targets)
            mtlopt.backward([loss], mtlopt.EW(), scaler=self.scaler)
            self._step(optimizer)
            losses.append(loss.detach())
        return {"loss": torch.stack(losses)}

    def predict(self, x):
        return [model.heads[t](model.encoder(x)) for t, model in enumerate(self.models)]

    def modules(self):
        return [self.models]

    def optimizers(self):
        return list(self._optimizers)


@register
class AlternatingRunner(MethodRunner):
    """``mtlopt.AlternatingSteps`` on the benchmark model: one optimizer step per task group per batch."""

    name = "alternating"
    description = "alternating task-group steps with per-group optimizer state (Pascal et al. 2021)"
    options = (
        Option(
            "state",
            "per-group",
            "one optimizer per group (IO) or one shared optimizer (IUS)",
            choices(alternating.State),
        ),
        Option(
            "group-size", None, "tasks per random group (default: one group per task)", parse=_positive_int
        ),
        Option("order", "fixed", "group order within a batch", choices(alternating.Order)),
        Option("regroup", "never", "draw a new random grouping every epoch", choices(alternating.Regroup)),
    )

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self.tasks = tasks
        self.model = make_model()
        self.alternating = mtlopt.AlternatingSteps(
            self.model.encoder,
            list(self.model.heads),  # one module per task
            optimizer.make,
            state=self.config["state"],
            group_size=self.config["group-size"],
            order=self.config["order"],
            regroup=self.config["regroup"],
            seed=self.seed,
            scaler=self.scaler,
        )
        if self.weight_total is not None:  # each group's step has weight 1 on the shared parameters
            factor = self.weight_total / self.groups()
            for p in self.model.encoder.parameters():
                if p.requires_grad:
                    p.register_hook(lambda grad, factor=factor: grad * factor)

    def groups(self) -> int:
        size = self.config["group-size"] or 1
        return -(-self.num_tasks // size)

    def weight_convention(self) -> str:
        return "K" if (self.config["group-size"] or 1) == 1 else "number of groups"

    def rescaled(self) -> bool:
        return True

    def train_step(self, x, targets):
        task_losses: dict[int, Tensor] = {}

        def closure(group: list[int]) -> list[Tensor]:
            z = self.model.encoder(x)
            losses = [self.tasks.task_loss(t, self.model.heads[t](z), targets) for t in group]
            task_losses.update((t, loss.detach()) for t, loss in zip(group, losses))
            return losses

        result = self.alternating.step(closure)
        return {
            "loss": torch.stack([task_losses[t] for t in range(self.num_tasks)]),
            "distance": torch.tensor(result.distance),
        }

    def on_epoch_start(self, epoch: int) -> None:
        if epoch > 0:
            self.alternating.new_epoch()

    def predict(self, x):
        return self.model(x)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return self.alternating.optimizers

    def state_dict(self):
        return {"model": self.model.state_dict(), "alternating": self.alternating.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.alternating.load_state_dict(state["alternating"])

    def describe(self):
        return {
            **super().describe(),
            "grouping": self.alternating.grouping_history,
            "covered_distance": self.alternating.covered_distance,
        }


# Adam/RMSprop step sizes above this are almost always an SGD learning rate passed by mistake.
ADAPTIVE_LR_WARNING = 0.01


@register
class MAORunner(OneModelRunner):
    """``mtlopt.MAO`` on the benchmark model: per-task Adam moments for the shared encoder.

    MAO replaces the optimizer: it takes ``--lr`` and ``--weight-decay``; ``--optimizer`` and
    ``--momentum`` do not apply (compare it with ``--optimizer adam`` baselines).
    """

    name = "mao"
    description = "MAO (Hervella et al. 2024): per-task adaptive (Adam) state for every shared parameter"
    options = (
        Option("reduction", "sum", "combine the task steps by sum or mean", choices(mao.Reduction)),
        Option("rule", "adam", "the per-task adaptive rule", choices(mao.Rule)),
        Option("amsgrad", "off", "AMSGrad maximum of the second moment", ("off", "on")),
        Option("balance", "on", "track the per-layer balance diagnostic", ("on", "off")),
    )

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        if optimizer.lr > ADAPTIVE_LR_WARNING and self.config["rule"] != "adagrad":
            warnings.warn(
                f"mao takes --lr {optimizer.lr:g} as the step size of its per-task {self.config['rule']} rule; "
                f"rates above {ADAPTIVE_LR_WARNING:g} (typical of SGD protocols) usually diverge or saturate "
                "the model. Give an adaptive rate such as --lr 1e-3.",
                UserWarning,
                stacklevel=2,
            )
        self.tasks = tasks
        self.model = make_model()
        groups: list[dict[str, Any]] = [
            {"params": self.model.encoder.parameters(), "shared": True},
            {"params": self.model.heads.parameters()},
        ]
        self.optimizer = mtlopt.MAO(
            groups,
            num_tasks=self.num_tasks,
            lr=optimizer.lr,
            weight_decay=optimizer.weight_decay,
            reduction=self.config["reduction"],
            rule=self.config["rule"],
            amsgrad=self.config["amsgrad"] == "on",
            balance_beta=0.99 if self.config["balance"] == "on" else None,
        )
        if self.weight_total is not None:  # the shared step is a sum of K task steps (or their mean)
            total = self.num_tasks if self.config["reduction"] == "sum" else 1
            self.optimizer.param_groups[0]["lr_scale"] = self.weight_total / total
        names = [name for name, _ in self.model.encoder.named_parameters(prefix="encoder")]
        self.layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))

    def weight_convention(self) -> str:
        return "K" if self.config["reduction"] == "sum" else "1"

    def rescaled(self) -> bool:
        return True

    def train_step(self, x, targets):
        self.optimizer.zero_grad()
        z = self.model.encoder(x)
        losses = self.tasks.losses([head(z) for head in self.model.heads], targets)
        values = self.optimizer.backward(losses, scaler=self.scaler)
        self._step(self.optimizer)
        logged = {"loss": values}
        if self.config["balance"] == "on":
            shares = self.optimizer.balance(self.model.named_parameters())
            missing = torch.full((self.num_tasks,), float("nan"), dtype=torch.float64)
            logged["balance"] = torch.stack([shares.get(layer, missing) for layer in self.layers]).reshape(-1)
        return logged

    def describe(self):
        modules = dict(self.model.named_modules())
        layers = [f"{layer} ({type(modules[layer]).__name__})" for layer in self.layers]
        return {**super().describe(), "balance_layers": layers if self.config["balance"] == "on" else []}
