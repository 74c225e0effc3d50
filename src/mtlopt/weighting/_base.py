"""The interface shared by every weighting: task weights from the Gramian and the losses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

HeadWeighting = Literal["weighted", "unweighted"]
FeatureBatch = Literal["flatten", "sum"]


@dataclass(frozen=True)
class WeightingOutput:
    """Task weights and what the weighting wants logged.

    Attributes:
        weights: shape (K,); the shared update is :math:`\\sum_t w_t \\nabla L_t`.
        diagnostics: scalars worth logging (e.g. a solver's iterations and residual).
    """

    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Weighting(ABC):
    """Maps the Gramian of the task gradients (and the task losses) to task weights.

    Subclasses set:

    - ``needs_gramian``: False for weightings computed from the losses alone (then
      :func:`mtlopt.backward` does a single ordinary backward pass of :math:`\\sum_t w_t L_t`);
    - ``min_tasks``: the fewest tasks the method accepts;
    - ``head_weighting``: whether task-specific parameters receive :math:`w_t \\nabla L_t`
      (``"weighted"``) or :math:`\\nabla L_t` (``"unweighted"``);
    - ``feature_batch``: how gradients w.r.t. a representation Z of shape (B, ...) enter the Gramian:
      ``"flatten"`` (one vector of B·D entries per task) or ``"sum"`` (per-sample gradients summed
      over the batch first).

    Stateless weightings are pure functions of their input; stateful ones override :meth:`reset`,
    :meth:`state_dict` and :meth:`load_state_dict`.

    Weightings with ``needs_gramian = False`` may also override two hooks of :func:`mtlopt.backward`:
    :meth:`prepare`, called first with the graph-attached losses (e.g. GradNorm measures per-task
    gradient norms there), and :meth:`objective`, the differentiable scalar that is backpropagated
    (by default :math:`\\sum_t w_t L_t`; uncertainty weighting adds its learned terms).
    """

    needs_gramian: ClassVar[bool] = True
    min_tasks: ClassVar[int] = 1
    # Set by mtlopt.backward to the process group it synchronizes over (None in one process): a weighting
    # that measures gradients or losses itself (in prepare) averages them over this group.
    sync_group: Any = None
    head_weighting: HeadWeighting = "weighted"
    feature_batch: FeatureBatch = "flatten"
    num_tasks: int | None = None

    @abstractmethod
    def compute(self, gramian: Tensor | None, losses: Tensor) -> WeightingOutput:
        """Weights for one step.

        Args:
            gramian: K×K float64 Gramian on the CPU (None when ``needs_gramian`` is False).
            losses: the K detached loss values.
        """

    def prepare(self, losses: Sequence[Tensor]) -> None:
        """Hook called by :func:`mtlopt.backward` with the graph-attached task losses (no-op)."""

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        r"""The scalar backpropagated when ``needs_gramian`` is False: :math:`\sum_t w_t L_t`."""
        return (output.weights.to(losses.device, losses.dtype) * losses).sum()

    def __call__(self, gramian: Tensor | None, losses: Tensor) -> Tensor:
        """The weights alone (see :meth:`compute`)."""
        return self.compute(gramian, losses).weights

    def reset(self) -> None:
        """Forget any state accumulated over steps (no-op for stateless weightings)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless weightings)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")
