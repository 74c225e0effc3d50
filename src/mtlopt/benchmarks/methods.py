"""Methods as the benchmark trainer runs them.

A method is a :class:`MethodRunner`: it builds its model(s) and optimizer(s), takes one training step
on a batch, predicts every task's output, and saves/restores its whole state. The trainer knows only
this interface, so a new method plugs in by registering a runner (``@register``) with its name, a
one-line description and the command-line options it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import mtlopt
from mtlopt.distributed import resolve_group, world_size

from .interfaces import MultiTaskModel


@dataclass(frozen=True)
class Option:
    """A method option: its command-line flag is ``--<name>``; values are parsed with ``parse``."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] = str


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    def make(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}; expected 'sgd' or 'adam'")


class MethodRunner(ABC):
    """How one method trains. Subclasses set ``name``, ``description`` and ``options``."""

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    produces_set: ClassVar[bool] = False  # True for methods that train one model per trade-off
    scaler: Any = None  # a torch.amp.GradScaler under float16 mixed precision (set by the trainer)
    steps_per_epoch: int = 1  # training steps per epoch (set by the trainer before build)

    def __init__(self, options: dict[str, Any], num_tasks: int, seed: int = 0) -> None:
        unknown = sorted(set(options) - {option.name for option in self.options})
        if unknown:
            raise ValueError(f"method {self.name} has no option {', '.join(unknown)}")
        self.config = {option.name: options.get(option.name, option.default) for option in self.options}
        self.num_tasks = num_tasks
        self.seed = seed

    @abstractmethod
    def build(
        self, make_model: Callable[[], MultiTaskModel], optimizer: OptimizerSettings, total_steps: int
    ) -> None:
        """Create the model(s) and optimizer(s); called once, after the seed is set."""

    @abstractmethod
    def train_step(self, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """One training step on a batch; returns detached per-step values to log (e.g. losses (K,))."""

    @abstractmethod
    def predict(self, x: Tensor) -> list[Tensor]:
        """Every task's output for a batch (the trainer sets eval mode and no_grad)."""

    def predict_members(self, x: Tensor) -> list[list[Tensor]]:
        """Every member's task outputs: one member for single-model methods."""
        return [self.predict(x)]

    def set_training(self, mode: bool) -> None:
        for module in self.modules():
            module.train(mode)

    @abstractmethod
    def modules(self) -> list[nn.Module]:
        """All trained modules (for train/eval mode and the device)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """All optimizers (the trainer sets their learning rate each epoch)."""

    def _step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step the optimizers, through the GradScaler when there is one (one scale update per step)."""
        for optimizer in optimizers:
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
        if self.scaler is not None:
            self.scaler.update()

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch changes (e.g. regrouping tasks)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": [m.state_dict() for m in self.modules()],
            "optimizers": [o.state_dict() for o in self.optimizers()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for module, saved in zip(self.modules(), state["modules"], strict=True):
            module.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers(), state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)

    def describe(self) -> dict[str, Any]:
        """Name and options, as written to result files."""
        return {"method": self.name, "options": dict(self.config)}


METHODS: dict[str, type[MethodRunner]] = {}


def register(runner: type[MethodRunner]) -> type[MethodRunner]:
    METHODS[runner.name] = runner
    return runner


def get_method(name: str) -> type[MethodRunner]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def _float_pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise ValueError(f"expected two comma-separated numbers, got {text!r}")
    return float(parts[0]), float(parts[1])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"expected a number >= 0, got {value}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


class SingleModelRunner(MethodRunner):
    """One multi-task model and one optimizer; the update comes from ``mtlopt.backward``."""

    def build(self, make_model, optimizer, total_steps, tasks) -> None:
        self.tasks = tasks
        self.model = make_model()
        self._weighting = self.weighting()
        learned = list(self._weighting.parameters()) if isinstance(self._weighting, nn.Module) else []
        groups = [{"params": list(self.model.parameters())}]
        if learned:  # e.g. uncertainty weighting's log-variances: trained by the same optimizer, no decay
            groups.append({"params": learned, "weight_decay": 0.0})
        self.optimizer = optimizer.make(groups)

    def weighting(self) -> mtlopt.Weighting:
        """The method's weighting (called in ``build``, after the model exists)."""
        raise NotImplementedError

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        return {}

    def train_step(self, x, targets):
        self.optimizer.zero_grad(set_to_none=True)
        z = self.model.encoder(x)
        losses = self.tasks.losses([head(z) for head in self.model.heads], targets)
        result = mtlopt.backward(losses, self._weighting, scaler=self.scaler, **self.backward_kwargs(z))
        self._step(self.optimizer)
        return {"loss": result.losses, "weights": result.weights}

    def predict(self, x):
        return self.model(x)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [self.optimizer]

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


_MGDA_OPTIONS = (
    Option("solver", "auto", "min-norm solver", ("auto", "active-set", "frank-wolfe", "pgd", "two-task")),
    Option(
        "normalization", "none", "gradient normalization before the solve", ("none", "l2", "loss", "loss+")
    ),
    Option(
        "head-weighting",
        "unweighted",
        "heads get grad L_t (paper) or alpha_t grad L_t (official)",
        ("unweighted", "weighted"),
    ),
    Option(
        "clip",
        (0.0, 1.0),
        "end-of-segment weights of the two-point rule, e.g. 0.001,0.999 (official)",
        parse=_float_pair,
    ),
    Option("weight-scale", "one", "weights sum to 1 or to K", ("one", "num-tasks")),
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
        Option(
            "feature-batch",
            "flatten",
            "representation Gramian: flatten (official) or sum (LibMTL)",
            ("flatten", "sum"),
        ),
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
            ("paper", "libmtl"),
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
        Option("weight-optimizer", "adam", "update of the task weights", ("adam", "sgd")),
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
        Option("order", "shuffled", "task order of the projections", ("shuffled", "fixed")),
        Option("reduction", "sum", "combine the projected gradients by sum or mean", ("sum", "mean")),
    )

    def weighting(self):
        return mtlopt.PCGrad(seed=self.seed, order=self.config["order"], reduction=self.config["reduction"])

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}


@register
class STLRunner(MethodRunner):
    """K independent models; model t is trained on task t alone and predicts task t."""

    name = "stl"
    description = "single-task learning: one model per task, each trained on its own loss"

    def build(self, make_model, optimizer, total_steps, tasks) -> None:
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
            ("per-group", "shared"),
        ),
        Option(
            "group-size", None, "tasks per random group (default: one group per task)", parse=_positive_int
        ),
        Option("order", "fixed", "group order within a batch", ("fixed", "shuffled")),
        Option("regroup", "never", "draw a new random grouping every epoch", ("never", "epoch")),
    )

    def build(self, make_model, optimizer, total_steps, tasks) -> None:
        self.tasks = tasks
        self.model = make_model()
        self.alternating = mtlopt.AlternatingSteps(
            self.model.encoder,
            self.model.heads,
            optimizer.make,
            state=self.config["state"],
            group_size=self.config["group-size"],
            order=self.config["order"],
            regroup=self.config["regroup"],
            seed=self.seed,
            scaler=self.scaler,
        )

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
class MAORunner(MethodRunner):
    """``mtlopt.MAO`` on the benchmark model: per-task Adam moments for the shared encoder.

    MAO replaces the optimizer: it takes ``--lr`` and ``--weight-decay``; ``--optimizer`` and
    ``--momentum`` do not apply (compare it with ``--optimizer adam`` baselines).
    """

    name = "mao"
    description = "MAO (Hervella et al. 2024): per-task adaptive (Adam) state for every shared parameter"
    options = (
        Option("reduction", "sum", "combine the task steps by sum or mean", ("sum", "mean")),
        Option("rule", "adam", "the per-task adaptive rule", ("adam", "rmsprop", "adagrad")),
        Option("amsgrad", "off", "AMSGrad maximum of the second moment", ("off", "on")),
        Option("balance", "on", "track the per-layer balance diagnostic", ("on", "off")),
    )

    def build(self, make_model, optimizer, total_steps, tasks) -> None:
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
        self.optimizer = mtlopt.MAO(
            [
                {"params": self.model.encoder.parameters(), "shared": True},
                {"params": self.model.heads.parameters()},
            ],
            num_tasks=self.num_tasks,
            lr=optimizer.lr,
            weight_decay=optimizer.weight_decay,
            reduction=self.config["reduction"],
            rule=self.config["rule"],
            amsgrad=self.config["amsgrad"] == "on",
            balance_beta=0.99 if self.config["balance"] == "on" else None,
        )
        names = [name for name, _ in self.model.encoder.named_parameters(prefix="encoder")]
        self.layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))

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

    def predict(self, x):
        return self.model(x)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [self.optimizer]

    def describe(self):
        modules = dict(self.model.named_modules())
        layers = [f"{layer} ({type(modules[layer]).__name__})" for layer in self.layers]
        return {**super().describe(), "balance_layers": layers if self.config["balance"] == "on" else []}


_SET_OPTIONS = (
    Option(
        "num-models", 5, "models in the set, one per evenly spaced preference vector", parse=_positive_int
    ),
    Option("scalarization", "linear", "scalarization of each subproblem", ("linear", "tchebycheff")),
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

    def transfer(self) -> Any:
        return None

    def member_preferences(self, count: int) -> Tensor:
        """The (count, m) preference vectors of the members (on the simplex)."""
        return mtlopt.preference_vectors(
            self.num_tasks, count, interior=self.config.get("preferences", "ends") == "interior"
        )

    def weightings(self, members: range) -> list[mtlopt.Weighting] | None:
        """Per-member weightings for the given member indices (None: the scalarization)."""
        return None

    def initial_models(self, make_model: Callable[[], nn.Module], count: int) -> list[nn.Module]:
        """The members before training: each with its own initialization."""
        return [make_model() for _ in range(count)]

    def build(self, make_model, optimizer, total_steps, tasks) -> None:
        self.tasks = tasks
        count = self.config["num-models"]
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
        Option("transfer-schedule", "constant", "rho over training", ("constant", "linear", "cosine")),
        Option("transfer-every", 1, "steps between transfers", parse=_positive_int),
        Option(
            "transfer-params",
            "shared",
            "parameters transferred: the shared trunk (as the MGD code) or all",
            ("shared", "all"),
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

    def transfer(self):
        return mtlopt.Transfer(
            strength=self.config["transfer-strength"],
            neighbours=self.config["transfer-neighbours"],
            schedule=self.config["transfer-schedule"],
            every=self.config["transfer-every"],
            parameters=self.config["transfer-params"],
        )


# Each member's whole model is its weighting's shared parameters (as in both official codes), so its
# heads get w_t grad L_t: the weightings' head_weighting has nothing to act on and is not offered.
_RAY_SET_OPTIONS = (
    Option("num-models", 5, "models in the set, one per preference ray", parse=_positive_int),
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
        return {**super().describe(), "rays": self.rays(self.config["num-models"]).tolist()}


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
            ("none", "num-tasks"),
        ),
    )

    def weightings(self, members):
        rays = self.rays(self.config["num-models"])
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
        Option("descent", "restricted", "descent-mode linear program", ("restricted", "relaxed")),
        Option("eps", 1e-4, "non-uniformity threshold between balance and descent mode", parse=float),
        Option(
            "weight-scale",
            "one",
            "sum of the weights: 1 (paper) or the number of tasks (official MultiMNIST script)",
            ("one", "num-tasks"),
        ),
    )
    # The official MultiMNIST runs: rays strictly inside the quadrant (EPO needs r > 0).
    angles = (1e-4 * 0.5 * math.pi, (1.0 - 1e-4) * 0.5 * math.pi)

    def weightings(self, members):
        rays = self.rays(self.config["num-models"])
        return [
            mtlopt.EPO(
                rays[k],
                eps=self.config["eps"],
                descent=self.config["descent"],
                weight_scale=self.config["weight-scale"],
            )
            for k in members
        ]


def method_options(names: Sequence[str]) -> dict[str, list[tuple[str, Option]]]:
    """Every method's definition of each option flag: ``{flag: [(method, option), ...]}``.

    Methods may define the same flag differently (``--order`` is a group order for ``alternating`` and a
    projection order for ``pcgrad``): a value given on the command line is checked by each method that
    accepts the flag, against its own choices and parser.
    """
    merged: dict[str, list[tuple[str, Option]]] = {}
    for name in names:
        for option in get_method(name).options:
            merged.setdefault(option.name, []).append((name, option))
    return merged
