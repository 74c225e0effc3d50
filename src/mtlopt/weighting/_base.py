r"""The three method protocols, chosen by what a method reads.

- :class:`LossWeighting` reads the K losses (and its own state) and returns the scalar objective to
  differentiate, with the weights for logging: EW, fixed weights, uncertainty weighting, the
  scalarizations of a population. :func:`mtlopt.backward` then takes one ordinary backward pass.
- :class:`GramianWeighting` reads the K×K Gramian of the task gradients (and the losses) and returns
  task weights. Where the gradients are taken is the caller's choice (``shared_params=`` or
  ``features=`` of :func:`mtlopt.backward`) unless the method names its own layer (:attr:`probe`, as
  GradNorm's balanced layer). How the weights are applied is the method's :attr:`update`:
  ``"combined"`` writes :math:`\sum_t w_t g_t` into the shared parameters (MGDA, PCGrad, ...);
  ``"loss"`` backpropagates the reweighted loss :math:`\sum_t w_t L_t` (GradNorm).
- :class:`DirectionMethod` reads the K×P Jacobian itself (rows :math:`g_t`, w.r.t. the shared
  parameters), the losses and its own per-task, per-parameter state (moving averages of the
  gradients, per-coordinate accumulators) and returns the shared update :math:`d` (P,) directly,
  with the weights for logging where it has them: ExcessMTL, MoCo, DB-MTL, and GradDrop (which reads
  the per-task gradients w.r.t. the representation elementwise instead). The Gramian is not enough
  for them: their state or their masks need the gradients coordinate by coordinate.

Each checks its input once, here, before the method sees it: the number of tasks, shapes, finiteness.
Each states the total weight its default update puts on the tasks (:attr:`Method.weight_sum`).

**Several batches per step.** A method may read more than one independent batch per step
(:attr:`Method.batches_per_step`; MoDo and SDMGrad: double sampling). A Gramian weighting says how
through its :attr:`GramianWeighting.batch_roles` (:class:`BatchRoles`): which two batches give the
cross-Gramian :math:`A = J_i J_j^\top` it reads (not symmetric in general), which batches' gradients
the shared update combines with its weights and which the heads receive. The caller passes the losses
of batch 0 as ``losses`` and those of the others as ``extra_losses`` of :func:`mtlopt.backward`; the
benchmark trainer draws the extra batches for any method whose ``batches_per_step`` is above 1.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .._options import check_choice
from ..errors import NonFiniteError

__all__ = [
    "BatchReduction",
    "BatchRoles",
    "DirectionMethod",
    "DirectionOutput",
    "FeatureBatch",
    "GramianWeighting",
    "HeadWeighting",
    "LossOutput",
    "LossWeighting",
    "Method",
    "Update",
    "WeightSum",
    "WeightingOutput",
]

HeadWeighting = Literal["weighted", "unweighted"]
FeatureBatch = Literal["flatten", "sum"]
Update = Literal["combined", "loss"]
Groups = Literal["whole-model", "layer", "tensor"]
# The total weight a method's default update puts on the tasks: 1, K, the sum of fixed weights, or
# something that depends on the data (learned or conflict-dependent weights).
WeightSum = Literal["1", "K", "sum of the weights", "data-dependent"]


@dataclass(frozen=True)
class WeightingOutput:
    """Task weights and what the method wants logged.

    Attributes:
        weights: shape (K,), float64; the shared update is :math:`\\sum_t w_t \\nabla L_t`.
        diagnostics: scalars worth logging (e.g. a solver's iterations and residual).
    """

    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossOutput:
    """What a :class:`LossWeighting` returns for one step.

    Attributes:
        loss: the differentiable scalar to backpropagate (the method's objective).
        weights: the K task weights it applies (detached, float64, CPU), for logging.
        diagnostics: scalars worth logging.
    """

    loss: Tensor
    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Method:
    """What every method shares: the number of tasks it takes, its state and its weight convention.

    Class attributes a method may set: ``min_tasks`` (the fewest tasks it accepts), ``num_tasks`` (the
    K it was built for, or None for any K), ``head_weighting`` (task-specific parameters receive
    :math:`w_t \\nabla L_t`, ``"weighted"``, or :math:`\\nabla L_t`, ``"unweighted"``) and
    ``weight_sum`` (see :data:`WeightSum`). Stateless methods are pure functions of their input;
    stateful ones override :meth:`reset`, :meth:`state_dict` and :meth:`load_state_dict`.
    """

    min_tasks: ClassVar[int] = 1
    num_tasks: int | None = None
    head_weighting: HeadWeighting = "weighted"
    weight_sum: WeightSum = "1"
    # Where num_tasks comes from, for error messages ("preference has {n} entries (tasks)").
    num_tasks_source: ClassVar[str] = "was set up for {n} tasks"

    @property
    def batches_per_step(self) -> int:
        """How many independent batches one step reads: 1, unless the method says otherwise (MoDo,
        SDMGrad: the batches of :attr:`GramianWeighting.batch_roles`)."""
        return 1

    def check_num_tasks(self, K: int, names: list[str] | None = None) -> None:
        """Raise a ``ValueError`` when K losses do not fit this method."""
        who = type(self).__name__
        if self.num_tasks is not None and K != self.num_tasks:
            listed = f" ({', '.join(names)})" if names else ""
            raise ValueError(f"{who} was set up for {self.num_tasks} tasks but got {K} losses{listed}")
        if K < self.min_tasks:
            raise ValueError(f"{who} needs at least {self.min_tasks} tasks, got {K}")

    def reset(self) -> None:
        """Forget any state accumulated over steps (no-op for stateless methods)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")


class LossWeighting(Method, ABC):
    r"""A method that reads the K losses: its update is one backward pass of :meth:`objective`.

    Subclasses implement :meth:`weigh` (the K weights of this step from the detached loss values) and
    may override :meth:`objective` (by default :math:`\sum_t w_t L_t`; uncertainty weighting adds its
    learned terms). Call the method on the graph-attached (K,) loss vector to get a
    :class:`LossOutput`; under several processes pass the global batch's loss values as ``values``.
    """

    head_weighting: HeadWeighting = "weighted"

    @abstractmethod
    def weigh(self, values: Tensor) -> WeightingOutput:
        """The weights of this step from the K detached loss values (float64, CPU, finite)."""

    def compute(self, gramian: Tensor | None, losses: Tensor) -> WeightingOutput:
        """Deprecated (0.1): the weights of :meth:`weigh` for the loss values ``losses``."""
        _deprecated(self, "compute(None, values)", "weigh(values) or call the method on the losses")
        return self.weigh(_check_vector(self, losses, "losses").detach().to("cpu", torch.float64))

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        r"""The scalar to backpropagate: :math:`\sum_t w_t L_t`."""
        return (output.weights.to(losses.device, losses.dtype) * losses).sum()

    def __call__(self, losses: Tensor, values: Tensor | None = None) -> LossOutput:
        """One step: ``losses`` the graph-attached (K,) vector, ``values`` the loss values the weights are
        computed from (the detached ``losses`` when None; the global batch's under several processes)."""
        losses = _check_vector(self, losses, "losses")
        values = losses.detach() if values is None else _check_vector(self, values, "values")
        if values.shape != losses.shape:
            raise ValueError(
                f"{type(self).__name__} got values of shape {tuple(values.shape)} for losses of shape "
                f"{tuple(losses.shape)}"
            )
        self.check_num_tasks(losses.shape[0])
        # Not checked for finiteness: mtlopt.backward does (naming the task), unless told not to.
        output = self.weigh(values.detach().to("cpu", torch.float64))
        return LossOutput(self.objective(losses, output), _weights64(output.weights), output.diagnostics)


@dataclass(frozen=True)
class DirectionOutput:
    r"""What a :class:`DirectionMethod` returns for one step.

    Attributes:
        direction: the shared update d, shape (P,), in the Jacobian's dtype and device; written into
            ``.grad`` of the shared parameters (``θ ← θ − η d``).
        weights: (K,) float64, the per-task coefficients of the update, for logging and for the heads
            (``head_weighting="weighted"``) and ``weight_total``: the weights of the current gradients
            where :math:`d = J^\top w` (ExcessMTL), else the coefficients of the method's own vectors
            (MoCo: λ on its tracked Y; DB-MTL: ones, K unit-direction terms).
        diagnostics: scalars worth logging.
        head_weights: (K,) the coefficients :math:`c_t` of the heads' update :math:`\sum_t c_t \nabla
            L_t` when the method sets them (DB-MTL: :math:`1/(L_t + \epsilon)`, the gradient of
            :math:`\log(L_t + \epsilon)`); None: as ``head_weighting`` says.
    """

    direction: Tensor
    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)
    head_weights: Tensor | None = None


class DirectionMethod(Method, ABC):
    r"""A method that reads the K×P Jacobian itself and returns the shared update.

    Subclasses implement :meth:`direct`. The Jacobian :math:`J` (rows :math:`g_t = \nabla_\theta L_t`,
    the shared parameters flattened and concatenated in order) reaches it **in the model's dtype, on
    the model's device**, promoted to at least float32 (float16 / bfloat16 gradients are promoted, so
    that squared-gradient accumulators do not overflow): the per-task, per-parameter state (K×P) is
    kept in that dtype and device, the size of K copies of the shared gradient, not twice that.
    Under several processes :func:`mtlopt.backward` passes the all-reduced J (every rank holds the
    same state) and under a ``GradScaler`` the unscaled J; a step with non-finite gradients under a
    scaler is skipped before the method sees it, so its state does not move.

    The dtype choice: float64 (as the Gramian methods) would double the K×P state and move it off
    the accelerator for no gain in what these rules compute (moving averages, per-coordinate ratios).

    A method sets ``head_weighting`` (heads receive :math:`w_t \nabla L_t` or :math:`\nabla L_t`), or
    returns its own head coefficients (:attr:`DirectionOutput.head_weights`). A method that reads the
    gradients of a function of the losses (DB-MTL: of :math:`\log(L_t + \epsilon)`) applies the chain
    rule to J and the (global) loss values, so that several processes compute what one would.

    Where it reads its gradients is its ``reads``: ``"parameters"`` (:meth:`direct` on J w.r.t.
    ``shared_params=``) or ``"features"`` (:meth:`direct_features` on the per-task gradients w.r.t. the
    representation ``features=`` Z, elementwise: GradDrop's masks); the other one is refused.

    :meth:`compute` checks J (K×P, finite) and the losses ((K,), finite) once.
    """

    head_weighting: HeadWeighting = "unweighted"
    # Whether d = Jᵀw for the reported weights (ExcessMTL); False when they weigh the method's own
    # vectors (MoCo's tracked Y, DB-MTL's rescaled moving averages): their sum is then not the total
    # weight on the current gradients (see weight_sum).
    weights_on_gradients: ClassVar[bool] = True
    reads: Literal["parameters", "features"] = "parameters"

    def direct_features(
        self, grads: Tensor, features: Tensor, losses: Tensor, reduce: Callable[[Tensor], Tensor]
    ) -> DirectionOutput:
        """The gradient to send into Z, shape ``features.shape``, from the (K, *Z.shape) per-task
        gradients w.r.t. Z (unscaled, finite, at least float32), Z itself (detached) and the K loss
        values. ``reduce`` averages a tensor over the processes (the identity in one): statistics of
        the global batch go through it, so that every rank takes the same decisions."""
        raise NotImplementedError(f"{type(self).__name__} does not read gradients w.r.t. features")

    @abstractmethod
    def direct(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        """The update of one step from the checked K×P Jacobian and the K float64 CPU loss values."""

    def __call__(self, jacobian: Tensor, losses: Tensor) -> Tensor:
        """The direction alone (see :meth:`compute`)."""
        return self.compute(jacobian, losses).direction

    def compute(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        """The checked direction, weights and diagnostics of one step (see :meth:`direct`)."""
        who = type(self).__name__
        losses, K = _check_matrix_and_losses(self, jacobian, losses, square=False)
        J = jacobian.detach()
        if not J.is_floating_point() or J.dtype in (torch.float16, torch.bfloat16):
            J = J.to(torch.float32)
        if not bool(torch.isfinite(J).all()):
            bad = sorted({int(i) for i in (~torch.isfinite(J)).nonzero()[:, 0]})
            raise NonFiniteError(f"{who}: non-finite Jacobian entries in rows {bad}")
        output = self.direct(J, _finite64(self, losses, "loss"))
        weights = _weights64(output.weights)
        if output.direction.shape != (J.shape[1],):
            raise RuntimeError(
                f"{who} returned a direction of shape {tuple(output.direction.shape)} for {J.shape[1]} parameters"
            )
        if weights.shape != (K,):
            raise RuntimeError(f"{who} returned weights of shape {tuple(weights.shape)} for {K} tasks")
        heads = None if output.head_weights is None else _weights64(output.head_weights)
        if heads is not None and heads.shape != (K,):
            raise RuntimeError(f"{who} returned head weights of shape {tuple(heads.shape)} for {K} tasks")
        return DirectionOutput(output.direction.detach(), weights, output.diagnostics, heads)


BatchReduction = Literal["mean", "sum"]


@dataclass(frozen=True)
class BatchRoles:
    r"""How a Gramian weighting uses the B independent batches of one step (batch 0 is the ``losses``
    of :func:`mtlopt.backward`, batch b ≥ 1 its ``extra_losses[b - 1]``).

    Attributes:
        gramian: (i, j): the method reads the K×K cross-Gramian :math:`A = J_i J_j^\top` of the
            per-task gradients on batches i and j (w.r.t. the shared parameters).
        update: the batches whose gradients the shared update combines:
            :math:`d = r \sum_{b} J_b^\top w`.
        heads: the batches whose gradients the task-specific parameters receive (each with the
            coefficients ``head_weighting`` says), with the same reduction.
        reduction: ``"mean"`` (r = 1/number of batches in the role) or ``"sum"`` (r = 1).
    """

    gramian: tuple[int, int]
    update: tuple[int, ...]
    heads: tuple[int, ...]
    reduction: BatchReduction = "mean"

    def __post_init__(self) -> None:
        indices = (*self.gramian, *self.update, *self.heads)
        if len(self.gramian) != 2 or not self.update or not self.heads or min(indices) < 0:
            raise ValueError(
                f"BatchRoles needs two Gramian batches and some update and head batches, got {self}"
            )
        check_choice("BatchRoles", "reduction", self.reduction, BatchReduction)

    @property
    def count(self) -> int:
        """The number of batches of one step (1 + the largest index)."""
        return 1 + max((*self.gramian, *self.update, *self.heads))


class GramianWeighting(Method, ABC):
    r"""A method that reads the K×K Gramian of the task gradients (and the losses).

    Subclasses implement :meth:`weigh`. They may set:

    - ``update``: ``"combined"`` (the shared parameters get :math:`\sum_t w_t g_t`) or ``"loss"``
      (one backward pass of :math:`\sum_t w_t L_t`);
    - ``feature_batch``: how gradients w.r.t. a representation Z of shape (B, ...) enter the Gramian,
      ``"flatten"`` (one vector of B·D entries per task) or ``"sum"`` (per-sample gradients summed
      over the batch first);
    - ``probe``: the tensors at which the method reads its Gramian, when it names them itself
      (GradNorm's balanced layer); None: where the caller of :func:`mtlopt.backward` says;
    - ``batch_roles``: for a method that reads several independent batches per step (a
      :class:`BatchRoles`: MoDo, SDMGrad), which batches give its cross-Gramian, the shared update
      and the heads' gradients; None (one batch): G = J Jᵀ of the step's batch;
    - ``groups``: ``"whole-model"`` (one Gramian of every shared parameter), ``"layer"`` (one per
      module owning shared parameters, as named by ``shared_params=module``) or ``"tensor"`` (one per
      shared parameter tensor). With groups, :func:`mtlopt.backward` hands :meth:`weigh_groups` one
      Gramian per group and gives each group's parameters :math:`\sum_t w^{(g)}_t g^{(g)}_t` with its
      own weights (GradVac's per-layer variants); a method that offers groups overrides it.

    and may override :meth:`transform_losses` (the losses whose gradients it combines; the user's by
    default, IMTL's learned scalings of them).

    :meth:`compute` (and calling the method, for the weights alone) checks the Gramian (square, K×K, finite) and the losses ((K,), finite) once and
    passes :meth:`weigh` float64 CPU copies; a non-finite entry raises :class:`mtlopt.NonFiniteError`.
    """

    update: ClassVar[Update] = "combined"
    feature_batch: FeatureBatch = "flatten"
    probe: list[Tensor] | None = None
    head_weighting: HeadWeighting = "weighted"
    batch_roles: BatchRoles | None = None
    groups: Groups = "whole-model"

    @property
    def batches_per_step(self) -> int:
        return 1 if self.batch_roles is None else self.batch_roles.count

    @abstractmethod
    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        """Weights for one step from the checked K×K float64 Gramian and the K loss values."""

    def sampled_tasks(self, num_tasks: int) -> list[int] | None:
        """The tasks whose gradients this step's weights read (sorted indices); None: every task.

        A method that samples tasks (SDMGrad-OS) draws them here, once per step, before :meth:`weigh`.
        :func:`mtlopt.backward` then computes the per-task gradients of those tasks only (on the
        several-batches path, where the method's batch gradients are its cost), hands :meth:`weigh` a
        Gramian whose other rows and columns are zero and requires weight 0 for the other tasks in the
        shared update. :meth:`weigh` must give the same weights from a full Gramian (masking it itself),
        so that a path which computes every task's gradient gives the same step.
        """
        return None

    def transform_losses(self, losses: list[Tensor]) -> list[Tensor]:
        """The K differentiable losses whose gradients the method combines, from the user's K losses.

        By default the user's own. A method with learned terms in its losses (IMTL's scales) returns new
        ones; :func:`mtlopt.backward` differentiates them instead, and their leaves that are neither
        shared parameters nor behind ``features`` (the method's own parameters) get their gradient
        with the heads'.
        """
        return losses

    def __call__(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The weights alone (see :meth:`compute`)."""
        return self.compute(gramian, losses).weights

    def compute(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        """The checked weights and diagnostics of one step (see :meth:`weigh`)."""
        G, L = self._checked(gramian, losses)
        output = self.weigh(G, L)
        weights = _weights64(output.weights)
        if weights.shape != (G.shape[0],):
            raise RuntimeError(
                f"{type(self).__name__} returned weights of shape {tuple(weights.shape)} for {G.shape[0]} tasks"
            )
        return WeightingOutput(weights, output.diagnostics)

    def weigh_groups(self, gramians: list[Tensor], losses: Tensor) -> WeightingOutput:
        """Weights per parameter group, shape (groups, K), from one checked float64 Gramian per group
        (``groups`` other than ``"whole-model"``); only methods that offer groups implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no parameter groups")

    def compute_groups(self, gramians: list[Tensor], losses: Tensor) -> WeightingOutput:
        """:meth:`weigh_groups` after the checks of :meth:`compute` on each Gramian; the output's
        weights have shape (groups, K)."""
        if not gramians:
            raise ValueError(f"{type(self).__name__} got no parameter group")
        checked = [self._checked(G, losses) for G in gramians]
        output = self.weigh_groups([G for G, _ in checked], checked[0][1])
        weights = torch.as_tensor(output.weights).detach().to("cpu", torch.float64)
        K = checked[0][0].shape[0]
        if weights.shape != (len(gramians), K) or not bool(torch.isfinite(weights).all()):
            raise RuntimeError(
                f"{type(self).__name__} returned group weights of shape {tuple(weights.shape)} (finite: "
                f"{bool(torch.isfinite(weights).all())}) for {len(gramians)} groups of {K} tasks"
            )
        return WeightingOutput(weights, output.diagnostics)

    def _checked(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The Gramian (square, K×K, finite) and the losses ((K,), finite) as float64 CPU copies."""
        losses, _ = _check_matrix_and_losses(self, gramian, losses, square=True)
        return _finite64(self, gramian, "Gramian"), _finite64(self, losses, "loss")


def check_method_options(method: Method, **options: tuple[object, Any]) -> None:
    """``check_choice`` for each ``option=(value, LiteralType)`` of a method's constructor."""
    for name, (value, kind) in options.items():
        check_choice(type(method).__name__, name, value, kind)


def _deprecated(method: Method, old: str, new: str) -> None:
    warnings.warn(
        f"{type(method).__name__}.{old} is deprecated since mtlopt 0.2; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def _check_matrix_and_losses(method: Method, matrix: Any, losses: Any, *, square: bool) -> tuple[Tensor, int]:
    """The checks a K×K Gramian (``square``) or a K×P Jacobian and the K losses beside it share:
    types, shapes, the method's number of tasks. Returns the losses and K."""
    who = type(method).__name__
    what = "K×K Gramian" if square else "K×P Jacobian"
    if not isinstance(matrix, Tensor):
        raise TypeError(f"{who} needs the {what} as a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2 or (square and matrix.shape[0] != matrix.shape[1]):
        raise ValueError(
            f"{who} needs a {'square ' if square else ''}{what}, got shape {tuple(matrix.shape)}"
        )
    losses = _check_vector(method, losses, "losses")
    K = matrix.shape[0]
    sized = f"{K}×{K} Gramian" if square else f"Jacobian of {K} rows"
    if method.num_tasks is not None and K != method.num_tasks:
        source = method.num_tasks_source.format(n=method.num_tasks)
        got = f"the Gramian is {K}×{K}" if square else f"the Jacobian has {K} rows"
        raise ValueError(f"{who} {source} but {got}")
    if losses.shape != (K,):
        raise ValueError(f"{who} got a {sized} but losses of shape {tuple(losses.shape)}")
    method.check_num_tasks(K)
    return losses, K


def _check_vector(method: Method, values: Any, what: str) -> Tensor:
    who = type(method).__name__
    if not isinstance(values, Tensor):
        raise TypeError(f"{who} needs the {what} as a 1-D torch.Tensor, got {type(values).__name__}")
    if values.ndim != 1:
        raise ValueError(
            f"{who} needs the {what} as a 1-D tensor of K entries, got shape {tuple(values.shape)}"
        )
    return values


def _finite64(method: Method, tensor: Tensor, what: str) -> Tensor:
    values = tensor.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(values).all()):
        bad = sorted({int(i) for i in (~torch.isfinite(values)).nonzero()[:, 0]})
        where = "tasks" if values.ndim == 1 else "rows"
        raise NonFiniteError(f"{type(method).__name__}: non-finite {what} entries in {where} {bad}")
    return values


def _weights64(weights: Tensor) -> Tensor:
    return torch.as_tensor(weights).detach().to("cpu", torch.float64)
