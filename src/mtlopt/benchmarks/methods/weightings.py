"""Single-model methods: one multi-task model and one optimizer, the update from ``mtlopt.backward``
with a weighting (EW, MGDA, MGDA-UB, fixed weights, uncertainty weighting, GradNorm, PCGrad)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import mtlopt
from mtlopt._options import choices
from mtlopt.min_norm import Solver
from mtlopt.weighting import FeatureBatch, HeadWeighting, gradnorm, mgda, pcgrad, uw

from ..interfaces import MultiTaskModel, RunnerTasks
from ._base import OneModelRunner, OptimizerSettings, Option, _float_list, _float_pair, register


class SingleModelRunner(OneModelRunner):
    """One multi-task model and one optimizer; the update comes from ``mtlopt.backward``."""

    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        self.tasks = tasks
        self.model = make_model()
        self._weighting = self.weighting()
        learned = list(self._weighting.parameters()) if isinstance(self._weighting, nn.Module) else []
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        if learned:  # e.g. uncertainty weighting's log-variances: trained by the same optimizer, no decay
            groups.append({"params": learned, "weight_decay": 0.0})
        self.optimizer = optimizer.make(groups)

    def weighting(self) -> mtlopt.Method:
        """The method's weighting (called in ``build``, after the model exists)."""
        raise NotImplementedError

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        return {}

    @property
    def batches_per_step(self) -> int:
        return self._weighting.batches_per_step

    def train_step(self, x, targets):
        return self.train_step_with_extra(x, targets, ())

    def train_step_with_extra(self, x, targets, extra_batches: Sequence[tuple[Any, Any]]):
        self.optimizer.zero_grad(set_to_none=True)
        z = self.model.encoder(x)
        losses = self.tasks.losses([head(z) for head in self.model.heads], targets)
        extra = []  # the losses of the step's other batches (methods that read several: MoDo, SDMGrad)
        for x_b, targets_b in extra_batches:
            z_b = self.model.encoder(x_b)
            extra.append(self.tasks.losses([head(z_b) for head in self.model.heads], targets_b))
        result = mtlopt.backward(
            losses,
            self._weighting,
            scaler=self.scaler,
            weight_total=self.weight_total,
            extra_losses=extra,
            **self.backward_kwargs(z),
        )
        self._step(self.optimizer)
        weight_sum = torch.tensor(result.diagnostics["weight_sum"], dtype=torch.float64)
        return {"loss": result.losses, "weights": result.weights, "weight_sum": weight_sum}

    def weight_convention(self) -> str:
        return self._weighting.weight_sum

    def rescaled(self) -> bool:
        return True

    def state_dict(self):
        return {**super().state_dict(), "weighting": self._weighting.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._weighting.load_state_dict(state["weighting"])


@register
class EWRunner(SingleModelRunner):
    name = "ew"
    description = "equal weighting: one step on the mean of the task losses"

    def weighting(self):
        return mtlopt.EW()


# The representation Gramian of the "-UB" variants (features=).
FEATURE_BATCH_OPTION = Option(
    "feature-batch",
    "flatten",
    "representation Gramian: flatten (official) or sum (LibMTL)",
    choices(FeatureBatch),
)

_MGDA_OPTIONS = (
    Option("solver", "auto", "min-norm solver", choices(Solver)),
    Option("normalization", "none", "gradient normalization before the solve", choices(mgda.Normalization)),
    Option(
        "head-weighting",
        "unweighted",
        "heads get grad L_t (paper) or alpha_t grad L_t (official)",
        choices(HeadWeighting)[::-1],
    ),
    Option(
        "clip",
        (0.0, 1.0),
        "end-of-segment weights of the two-point rule, e.g. 0.001,0.999 (official)",
        parse=_float_pair,
    ),
    Option("weight-scale", "one", "weights sum to 1 or to K", choices(mgda.WeightScale)),
)


def _mgda(config: dict[str, Any], **extra: Any) -> mtlopt.MGDA:
    return mtlopt.MGDA(
        solver=config["solver"],
        normalization=config["normalization"],
        head_weighting=config["head-weighting"],
        clip=tuple(config["clip"]),
        weight_scale=config["weight-scale"],
        **extra,
    )


@register
class MGDARunner(SingleModelRunner):
    name = "mgda"
    description = "MGDA (Sener & Koltun 2018): min-norm weights of the gradients w.r.t. the shared parameters"
    options = _MGDA_OPTIONS

    def weighting(self):
        return _mgda(self.config)

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}


@register
class MGDAUBRunner(SingleModelRunner):
    name = "mgda-ub"
    description = "MGDA-UB (Sener & Koltun 2018): min-norm weights of the gradients w.r.t. the representation"
    options = (
        *_MGDA_OPTIONS,
        FEATURE_BATCH_OPTION,
    )

    def weighting(self):
        return _mgda(self.config, feature_batch=self.config["feature-batch"])

    def backward_kwargs(self, z):
        return {"features": z}


@register
class GridRunner(SingleModelRunner):
    name = "grid"
    description = "fixed task weights (one point of the grid-search baseline of Sener & Koltun 2018)"
    options = (
        Option("task-weights", None, "the fixed weights, e.g. 0.3,0.7 (default: equal)", parse=_float_list),
    )

    def weighting(self):
        weights = self.config["task-weights"] or (1.0 / self.num_tasks,) * self.num_tasks
        return mtlopt.FixedWeights(weights)


@register
class UWRunner(SingleModelRunner):
    name = "uw"
    description = "uncertainty weighting (Kendall et al. 2018): learned log-variance weight per task"
    options = (
        Option(
            "convention",
            "paper",
            "the paper's per-task-type terms or LibMTL's regression form for every task",
            choices(uw.Convention),
        ),
    )

    def weighting(self):
        convention = self.config["convention"]
        types = self.tasks.task_types if convention == "paper" else None
        uw = mtlopt.UncertaintyWeighting(self.num_tasks, types, convention)
        return uw.to(next(self.model.parameters()).device)


def last_weight_layer(module: nn.Module, example: Any) -> tuple[str, nn.Module]:
    """The submodule with a weight of two or more dimensions (a kernel or matrix, not a norm's scale) that
    runs last when ``module`` processes ``example``: GradNorm's "last shared layer".

    Execution order, not registration order: a decoder may register its blocks in the opposite order to
    the one it runs them in (SegNet), and the last registered module may be a BatchNorm (ResNet, VGG).
    """
    candidates = {
        name: m for name, m in module.named_modules() if any(p.ndim >= 2 for p in m.parameters(recurse=False))
    }
    if not candidates:
        raise ValueError(f"{type(module).__name__} has no layer with a weight of two or more dimensions")
    ran: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _in, _out, name=name: ran.append(name))
        for name, m in candidates.items()
    ]
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()  # no running-statistics update, no dropout draw
        with torch.no_grad():
            module(example)
    finally:
        for m, training in modes.items():
            m.training = training
        for handle in handles:
            handle.remove()
    if not ran:
        raise ValueError(f"no layer of {type(module).__name__} with a weight ran on the example input")
    return ran[-1], candidates[ran[-1]]


@register
class GradNormRunner(SingleModelRunner):
    name = "gradnorm"
    description = (
        "GradNorm (Chen et al. 2018): weights balancing per-task gradient norms at the last shared layer"
    )
    options = (
        Option("alpha", 1.5, "asymmetry alpha", parse=float),
        Option("weight-lr", 0.025, "step size of the task-weight update", parse=float),
        Option(
            "weight-optimizer", "adam", "update of the task weights", choices(gradnorm.WeightOptimizer)[::-1]
        ),
    )

    def weighting(self):
        device = next(self.model.parameters()).device
        example, _ = self.tasks.batch("train", torch.arange(2), device)
        self.layer, layer = last_weight_layer(self.model.encoder, example)
        return mtlopt.GradNorm(
            self.num_tasks,
            layer,
            alpha=self.config["alpha"],
            lr=self.config["weight-lr"],
            optimizer=self.config["weight-optimizer"],
        )

    def describe(self):
        layer = dict(self.model.encoder.named_modules())[self.layer]
        return {**super().describe(), "balanced_layer": f"encoder.{self.layer} ({type(layer).__name__})"}


@register
class PCGradRunner(SingleModelRunner):
    name = "pcgrad"
    description = "PCGrad (Yu et al. 2020): task gradients projected off each other's conflicting parts"
    options = (
        Option("order", "shuffled", "task order of the projections", choices(pcgrad.Order)),
        Option(
            "reduction", "sum", "combine the projected gradients by sum or mean", choices(pcgrad.Reduction)
        ),
    )

    def weighting(self):
        return mtlopt.PCGrad(seed=self.seed, order=self.config["order"], reduction=self.config["reduction"])

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}
