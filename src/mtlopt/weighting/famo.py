r"""FAMO: fast adaptive multitask optimization, task weights learned from each step's loss decrease.

Bo Liu, Yihao Feng, Peter Stone and Qiang Liu, "FAMO: Fast Adaptive Multitask Optimization",
NeurIPS 2023, arXiv:2306.03792. Official code: ``Cranial-XIX/FAMO`` (``famo.py::FAMO`` and
``methods/weight_methods.py::FAMO``).

FAMO keeps task logits :math:`\xi` (start 0), :math:`z = \mathrm{softmax}(\xi)`. With
:math:`D_t = L_t - b_t + \varepsilon` (:math:`b` the ``min_losses``, default 0,
:math:`\varepsilon = 10^{-8}`) and :math:`c = (\sum_t z_t / D_t)^{-1}` held constant, a step
backpropagates :math:`c \sum_t z_t \log D_t`, i.e. the task weights are

.. math::

    w_t = \frac{c\, z_t}{D_t}, \qquad \sum_t w_t = 1 .

After the optimizer step the losses are recomputed on the same batch, without gradients
(:meth:`FAMO.update`): :math:`\delta_t = \log D_t(\text{before}) - \log D_t(\text{after})`, the logit
gradient is :math:`J_{\mathrm{softmax}}(\xi)^\top \delta = z \odot (\delta - z^\top\delta)`, and the
logits take one ``torch.optim.Adam`` step (learning rate ``lr``, L2 weight decay ``weight_decay``).

Usage, inside your loop (FAMO's price is that second forward pass, without a graph):

.. code-block:: python

    famo = mtlopt.FAMO(num_tasks=2)
    for x, y in loader:
        optimizer.zero_grad()
        mtlopt.backward(task_losses(model(x), y), famo)
        optimizer.step()
        with torch.no_grad():
            famo.update(task_losses(model(x), y))  # the same batch, after the step

Weights are computed from the loss values :func:`mtlopt.backward` gives the method (the global
batch's under several processes); :meth:`~FAMO.update` averages the new losses over the processes
(``sync="auto"``), so that the logits stay identical on every rank.

Choices of the paper, the official code, LibMTL and TorchJD (the default is the paper's):

==================  ====================================  ============================================
option              default                               alternatives in the peers
==================  ====================================  ============================================
``lr``              0.025 (paper, all)                    –
``weight_decay``    1e-3 (paper's Algorithm, the          1e-2 (official ``famo.py``, argparse and
                    official ``run.sh`` for NYUv2, QM9,   Cityscapes ``run.sh``); 1e-5 (official
                    CelebA; LibMTL; TorchJD)              ``weight_methods.py`` class default)
``min_losses``      0 (all)                               any lower bounds :math:`b_t`
gradient clipping   none: a recipe setting                official: ``clip_grad_norm_(shared, 1.0)``
                                                          after the backward pass (the FAMO code base
                                                          clips every method): call
                                                          ``torch.nn.utils.clip_grad_norm_`` yourself
recomputation       the caller's (official and LibMTL:    in eval mode (no BatchNorm statistics
                    train mode under ``no_grad``:         update, no dropout draw): a deviation, the
                    BatchNorm statistics move twice,      caller's choice
                    dropout is redrawn)
==================  ====================================  ============================================

LibMTL and TorchJD keep :math:`\xi` in float32 on the model's device; here it is float64 on the CPU
(K numbers), which changes the weights only in the last float32 digits.

State (``state_dict``): the logits, the Adam moments and step, the losses of the last step (waiting for
:meth:`~FAMO.update`). ``reset()`` forgets all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..distributed import Sync, all_reduce_mean_, resolve_group
from ._base import LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive, check_positive_int, check_positive_number, task_vector

__all__ = ["FAMO"]

_STATE_KEYS = {"num_tasks", "logits", "optimizer", "previous"}


class FAMO(LossWeighting):
    r"""FAMO (Liu et al. 2023): weights :math:`c z_t / D_t` with logits trained on the loss decrease.

    Args:
        num_tasks: K.
        lr: the logits' Adam learning rate (0.025).
        weight_decay: the logits' Adam weight decay γ (1e-3).
        min_losses: lower bounds :math:`b_t` of the losses (0 when None).
        eps: added to :math:`L_t - b_t` before the logarithm (1e-8).

    After each optimizer step call :meth:`update` with the losses recomputed on the same batch.
    """

    weight_sum: WeightSum = "1"

    def __init__(
        self,
        num_tasks: int,
        *,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: list[float] | Tensor | None = None,
        eps: float = 1e-8,
    ) -> None:
        self.num_tasks: int = check_positive_int("FAMO", "num_tasks", num_tasks)
        self._K = self.num_tasks
        self.lr = check_positive_number("FAMO", "lr", lr)
        self.weight_decay = check_positive_number("FAMO", "weight_decay", weight_decay, allow_zero=True)
        self.eps = check_positive_number("FAMO", "eps", eps, allow_zero=True)
        zeros = [0.0] * num_tasks
        self.min_losses = task_vector(
            "FAMO", "min_losses", zeros if min_losses is None else min_losses, num_tasks
        )
        self.reset()

    def reset(self) -> None:
        """Logits back to 0, a fresh Adam, no pending step."""
        self.logits = torch.zeros(self._K, dtype=torch.float64, requires_grad=True)
        self._optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
        self._previous: Tensor | None = None

    def task_probabilities(self) -> Tensor:
        """:math:`z = \\mathrm{softmax}(\\xi)` (detached, float64)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def _gaps(self, values: Tensor, what: str) -> Tensor:
        gaps = values - self.min_losses + self.eps
        check_positive("FAMO", gaps, f"{what} - min_losses + eps")
        return gaps

    def weigh(self, values: Tensor) -> WeightingOutput:
        gaps = self._gaps(values, "loss")
        z = self.task_probabilities()
        ratio = z / gaps
        weights = ratio / ratio.sum()
        self._previous = values.clone()
        return WeightingOutput(
            weights, {"famo_logit_spread": float(self.logits.detach().max() - self.logits.detach().min())}
        )

    def update(
        self, new_losses: Tensor | Sequence[Tensor] | Mapping[Any, Tensor], *, sync: Sync = "auto"
    ) -> None:
        """One Adam step of the logits from the losses recomputed on the same batch after the step.

        ``new_losses``: the K losses, as :func:`mtlopt.backward` takes them (a list or mapping of scalar
        tensors) or one tensor of shape (K,); any device and dtype; detached here. Under several processes they
        are averaged over the ranks (``sync``, as in :func:`mtlopt.backward`), so pass this rank's.
        """
        if self._previous is None:
            raise RuntimeError(
                "FAMO.update needs the losses of a step first: call mtlopt.backward(losses, famo) "
                "(or famo(losses)) before every update, once"
            )
        if isinstance(new_losses, Mapping):  # as mtlopt.backward takes them: task name -> loss
            new_losses = list(new_losses.values())
        if isinstance(new_losses, (list, tuple)):
            if not all(isinstance(loss, Tensor) and loss.numel() == 1 for loss in new_losses):
                raise TypeError("FAMO.update needs the new losses as scalar tensors (a list or a 1-D tensor)")
            new_losses = torch.stack([loss.detach().reshape(()) for loss in new_losses])
        if not isinstance(new_losses, Tensor):
            raise TypeError(
                f"FAMO.update needs the new losses as a torch.Tensor or a list of scalar tensors, got "
                f"{type(new_losses).__name__}"
            )
        if new_losses.shape != (self.num_tasks,):
            raise ValueError(
                f"FAMO.update needs {self.num_tasks} new losses (one per task), got shape "
                f"{tuple(new_losses.shape)}"
            )
        values = new_losses.detach().clone()
        all_reduce_mean_([values], resolve_group(sync))
        values = values.to("cpu", torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"FAMO.update got non-finite new losses {values.tolist()}")
        delta = self._gaps(self._previous, "loss").log() - self._gaps(values, "new loss").log()
        z = self.task_probabilities()
        self.logits.grad = z * (delta - z @ delta)  # replaces the last one: no zero_grad needed
        self._optimizer.step()
        self._previous = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "logits": self.logits.detach().clone(),
            "optimizer": self._optimizer.state_dict(),
            "previous": None if self._previous is None else self._previous.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != _STATE_KEYS:
            raise ValueError(f"FAMO state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        if state["num_tasks"] != self.num_tasks:
            raise ValueError(
                f"FAMO was set up for {self.num_tasks} tasks but the state is for {state['num_tasks']}"
            )
        logits = torch.as_tensor(state["logits"], dtype=torch.float64)
        if logits.shape != (self.num_tasks,):
            raise ValueError(
                f"FAMO state logits must have shape ({self.num_tasks},), got {tuple(logits.shape)}"
            )
        self.reset()
        with torch.no_grad():
            self.logits.copy_(logits)
        self._optimizer.load_state_dict(state["optimizer"])
        previous = state["previous"]
        self._previous = None if previous is None else torch.as_tensor(previous, dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return (
            f"FAMO(num_tasks={self.num_tasks}, lr={self.lr}, weight_decay={self.weight_decay}, "
            f"eps={self.eps})"
        )
