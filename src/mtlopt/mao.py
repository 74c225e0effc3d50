r"""MAO: Multi-Adaptive Optimization — per-task, per-parameter adaptive steps.

Álvaro S. Hervella, José Rouco, Jorge Novo, Marcos Ortega, "Multi-Adaptive Optimization for multi-task
learning with deep neural networks", Neural Networks 170 (2024) 254–265,
doi:10.1016/j.neunet.2023.11.038. The same rule is AdaTask's (Yang et al., AAAI 2023).

Each task k keeps its own adaptive state for every *shared* parameter, so each task's contribution to
each parameter is normalized by that task's own statistics; the task steps are then combined. With the
Adam rule (default), for a shared tensor p and step t:

.. math::

    g_k = \nabla_p L_k,\quad m_k \leftarrow \beta_1 m_k + (1-\beta_1) g_k,\quad
    v_k \leftarrow \beta_2 v_k + (1-\beta_2) g_k^2,

    u_k = \frac{m_k / (1-\beta_1^t)}{\sqrt{v_k / (1-\beta_2^t)} + \varepsilon},\qquad
    p \leftarrow p - \eta \sum_k u_k \quad (\texttt{reduction="sum"};\ \texttt{"mean"}: \eta/K).

Task-specific parameters (heads) follow ordinary Adam on their own task's gradient, which is the rule
above with K = 1. Weight decay is decoupled and applied once per step (:math:`p \leftarrow p(1-\eta
\lambda)`, as AdamW), not once per task. With one task MAO performs exactly the arithmetic of
``torch.optim.Adam`` (``torch.optim.AdamW`` with weight decay), ε added after the square root.

What the paper specifies beyond this rule (sum or mean over tasks, an extra balancing term, the ε
placement) could not be confirmed. ``reduction="sum"`` is the default, the choice of the public
reimplementations (a JAX and a TensorFlow one) and of AdaTask. The per-task rule is a small family, as
in AdaTask: ``"adam"`` (with optional AMSGrad), ``"rmsprop"`` (:math:`v_k \leftarrow \beta_2 v_k +
(1-\beta_2) g_k^2`, :math:`u_k = g_k / (\sqrt{v_k} + \varepsilon)`, as ``torch.optim.RMSprop`` with
``alpha = betas[1]``) and ``"adagrad"`` (:math:`s_k \leftarrow s_k + g_k^2`, :math:`u_k = g_k /
(\sqrt{s_k} + \varepsilon)`, as ``torch.optim.Adagrad``). The three rules share the decoupled weight
decay; ``torch.optim.RMSprop`` and ``Adagrad`` add :math:`\lambda p` to the gradient instead, so they
match MAO with one task only at ``weight_decay=0``. With ``reduction="mean"`` and weight decay, the decay
still uses the full :math:`\eta` (it is not a per-task step).

Balance diagnostic (``balance_beta``): per shared tensor and task, an exponential moving average of the
squared norm of the update the task contributes, :math:`b_k \leftarrow \beta b_k + (1-\beta)
\|\eta u_k\|^2`; :meth:`MAO.balance` aggregates it per layer into each task's share (AdaTask's measure).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, overload

import torch
from torch import Tensor

from ._checks import (
    LossesLike,
    as_loss_vector,
    check_finite_on_every_rank,
    non_finite_loss_message,
)
from ._options import check_choice
from ._task_step import StepContext, checked_jacobian, fill_nan
from .distributed import Sync, all_reduce_mean_, grads_of, resolve_group
from .distributed import scale_of as _scale_of
from .gradients import JacobianMethod

__all__ = ["MAO"]

Rule = Literal["adam", "rmsprop", "adagrad"]
Reduction = Literal["sum", "mean"]


class MAO(torch.optim.Optimizer):
    """Multi-Adaptive Optimization: per-task adaptive state for the shared parameters.

    Args:
        params: parameters or parameter groups. Mark the groups of shared parameters with
            ``"shared": True``, e.g. ``[{"params": encoder.parameters(), "shared": True},
            {"params": heads.parameters()}]``; unmarked groups are task-specific.
        num_tasks: K, the number of tasks.
        lr: learning rate η.
        betas: (β1, β2); ``"rmsprop"`` uses β2 as its smoothing constant.
        eps: ε, added after the square root.
        weight_decay: decoupled weight decay λ (applied once per step).
        reduction: ``"sum"`` (default) or ``"mean"`` of the task steps.
        amsgrad: AMSGrad's running maximum of the second moment (``"adam"`` only).
        rule: ``"adam"``, ``"rmsprop"`` or ``"adagrad"``.
        balance_beta: if set, track the balance diagnostic with this EMA coefficient (e.g. 0.99).

    Usage::

        optimizer.zero_grad()
        losses = [...]                    # K scalar losses from one forward pass
        optimizer.backward(losses)        # per-task gradients of the shared parameters, .grad of the rest
        optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        num_tasks: int,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        reduction: Reduction = "sum",
        amsgrad: bool = False,
        rule: Rule = "adam",
        balance_beta: float | None = None,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"MAO num_tasks must be an integer >= 1, got {num_tasks!r}")
        if not lr >= 0.0:
            raise ValueError(f"MAO lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"MAO betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"MAO eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"MAO weight_decay must be >= 0, got {weight_decay}")
        check_choice("MAO", "reduction", reduction, Reduction)
        check_choice("MAO", "rule", rule, Rule)
        if amsgrad and rule != "adam":
            raise ValueError("MAO amsgrad applies to rule='adam' only")
        if balance_beta is not None and not 0.0 <= balance_beta < 1.0:
            raise ValueError(f"MAO balance_beta must be in [0, 1), got {balance_beta}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "shared": False,
        }
        super().__init__(params, defaults)
        if not any(group["shared"] for group in self.param_groups):
            raise ValueError(
                'MAO has no shared parameters: pass the shared ones as a group with "shared": True, e.g. '
                '[{"params": encoder.parameters(), "shared": True}, {"params": heads.parameters()}]'
            )
        self.num_tasks = num_tasks
        self.reduction: Reduction = reduction
        self.rule: Rule = rule
        self.balance_beta = balance_beta
        self._task_grads: dict[Tensor, Tensor] = {}

    # --- gradients --------------------------------------------------------------------------------

    def shared_parameters(self) -> list[Tensor]:
        return [p for group in self.param_groups if group["shared"] for p in group["params"]]

    def task_specific_parameters(self) -> list[Tensor]:
        return [p for group in self.param_groups if not group["shared"] for p in group["params"]]

    def backward(
        self,
        losses: LossesLike,
        *,
        method: JacobianMethod = "auto",
        check_finite: bool = True,
        retain_graph: bool = False,
        sync: Sync = "auto",
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        r"""Per-task gradients of the shared parameters and ordinary gradients of the others.

        The shared parameters' per-task gradients come from one Jacobian computation
        (:class:`mtlopt.gradients.Jacobian`, the step :func:`mtlopt.backward` takes too); task-specific parameters get ``.grad`` from one
        backward pass of :math:`\sum_t L_t` restricted to them (each head receives its own task's
        gradient). With ``sync`` (see :mod:`mtlopt.distributed`) the per-task gradients are averaged
        across processes before the moments see them. With a ``GradScaler`` the losses are scaled and the
        per-task gradients unscaled here; use ``scaler.step(optimizer)`` as usual. Returns the K
        detached losses.
        """
        names, items, vector = as_loss_vector(losses)
        if len(items) != self.num_tasks:
            raise ValueError(
                f"MAO was set up for {self.num_tasks} tasks but got {len(items)} losses ({', '.join(names)})"
            )
        group = resolve_group(sync)
        if check_finite:  # on every rank together: none is left waiting in the Jacobian's all-reduce
            check_finite_on_every_rank(vector, group, lambda: non_finite_loss_message(names, vector))
        scale = _scale_of(scaler, vector)
        shared = [p for p in self.shared_parameters() if p.requires_grad]
        others = [p for p in self.task_specific_parameters() if p.requires_grad]
        ctx = StepContext(names, items, scale, group, check_finite and scale == 1.0, method)
        scaled = ctx.scaled_items()
        jac = checked_jacobian(ctx, shared, "a shared parameter", retain_graph=bool(others) or retain_graph)
        if jac is None:  # overflow: NaN gradients make scaler.step skip this step
            fill_nan(shared)
            self._task_grads.clear()
            return vector.detach()
        blocks = jac.blocks
        # A shared parameter no loss reaches is skipped, as optimizers skip a .grad of None.
        self.set_task_gradients({p: b for p, b, r in zip(shared, blocks, jac.reached) if r})
        if scale != 1.0 and not others and shared:
            # scaler.step needs a .grad to record its inf check on; the update reads the per-task gradients
            shared[0].grad = torch.zeros_like(shared[0])
        if others:
            torch.autograd.backward(sum(scaled[1:], scaled[0]), inputs=others, retain_graph=retain_graph)
            all_reduce_mean_(grads_of(others), group)
        return vector.detach()

    def set_task_gradients(self, gradients: Mapping[Tensor, Tensor]) -> None:
        """Give the per-task gradients of shared parameters directly: ``{p: tensor of shape (K, *p.shape)}``.

        Use this when the Jacobian is computed elsewhere (e.g. averaged across processes).
        """
        shared = {p for p in self.shared_parameters()}
        for p, grad in gradients.items():
            if p not in shared:
                raise ValueError(
                    f"set_task_gradients: a tensor of shape {tuple(p.shape)} is not a shared parameter of this MAO"
                )
            if grad.shape != (self.num_tasks, *p.shape):
                raise ValueError(
                    f"set_task_gradients: expected per-task gradients of shape {(self.num_tasks, *p.shape)}, got {tuple(grad.shape)}"
                )
            self._task_grads[p] = grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._task_grads.clear()

    # --- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict()`` plus ``num_tasks``."""
        state = super().state_dict()
        state["num_tasks"] = self.num_tasks
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved with the same ``num_tasks``; the balance statistics keep their float64."""
        for saved in (state_dict.get("num_tasks"), _saved_num_tasks(state_dict)):
            if saved is not None and saved != self.num_tasks:
                raise ValueError(
                    f"the MAO state was saved with num_tasks={saved}, this MAO has num_tasks={self.num_tasks}"
                )
        # torch casts floating state to each parameter's dtype: keep the float64 balance as it was saved
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        balances = {
            p: state_dict["state"][i]["balance"]
            for i, p in zip(saved_ids, params)
            if "balance" in state_dict["state"].get(i, {})
        }
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "num_tasks"})
        for p, balance in balances.items():
            self.state[p]["balance"] = balance.to(device=p.device, copy=True)

    # --- the update ------------------------------------------------------------------------------

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if group["shared"]:
                    grad = self._task_grads.get(p)
                    if grad is None and p.grad is not None and self._task_grads == {}:
                        raise RuntimeError(
                            "MAO.step: a shared parameter has a .grad but no per-task gradients; call "
                            "mao.backward(losses) (or mao.set_task_gradients) instead of loss.backward()"
                        )
                else:
                    grad = None if p.grad is None else p.grad.unsqueeze(0)
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("MAO does not support sparse gradients")
                self._update(p, grad, group, per_task=group["shared"])
        self._task_grads.clear()
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict[str, Any], per_task: bool) -> None:
        """One step of the per-task rule for parameter p with gradients grad of shape (K', *p.shape)."""
        state = self.state[p]
        tasks = grad.shape[0]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            name = "sum" if self.rule == "adagrad" else "exp_avg_sq"
            state[name] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            if self.rule == "adam":
                state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            if self.balance_beta is not None and per_task:
                state["balance"] = torch.zeros(tasks, dtype=torch.float64, device=p.device)
        state["step"] += 1
        step = float(state["step"])
        if weight_decay != 0.0:
            p.mul_(1 - lr * weight_decay)
        scale = lr / tasks if (per_task and self.reduction == "mean") else lr
        if self.rule == "adam":
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = scale / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            if group["amsgrad"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
            else:
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            numerator = exp_avg
        elif self.rule == "rmsprop":
            square_avg = state["exp_avg_sq"]
            square_avg.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = square_avg.sqrt().add_(eps)
            numerator, step_size = grad, scale
        else:
            state["sum"].addcmul_(grad, grad, value=1)
            denom = state["sum"].sqrt().add_(eps)
            numerator, step_size = grad, scale
        if self.balance_beta is not None and "balance" in state:
            contribution = (numerator / denom).pow(2).flatten(1).sum(1).double() * step_size**2
            state["balance"].mul_(self.balance_beta).add_(contribution, alpha=1 - self.balance_beta)
        for k in range(tasks):  # each task's step with Adam's own fused operation
            p.addcdiv_(numerator[k], denom[k], value=-step_size)

    # --- diagnostics -----------------------------------------------------------------------------

    def balance(
        self, named_parameters: Iterable[tuple[str, Tensor]], depth: int | None = None
    ) -> dict[str, Tensor]:
        """Each task's share of the (EMA of the) squared update, per layer.

        Args:
            named_parameters: e.g. ``model.named_parameters()``; only shared parameters are counted.
            depth: group parameter names by their first ``depth`` dotted components (default: the module,
                i.e. everything but the last component: ``encoder.0.weight`` → ``encoder.0``).

        Returns:
            ``{layer: tensor of K shares summing to 1}`` (layers with no update yet are left out).
        """
        if self.balance_beta is None:
            raise ValueError("MAO.balance needs balance_beta set when the optimizer is created")
        per_layer: dict[str, list[Tensor]] = defaultdict(list)
        for name, p in named_parameters:
            state = self.state.get(p, {})
            if "balance" not in state:
                continue
            parts = name.split(".")
            layer = ".".join(parts[:depth] if depth is not None else parts[:-1]) or name
            per_layer[layer].append(state["balance"])
        if not per_layer:
            return {}
        # Summed where the states live, then one copy to the host (not one synchronization per tensor).
        totals = torch.stack([torch.stack(parts).sum(0) for parts in per_layer.values()]).cpu()
        return {layer: total / total.sum() for layer, total in zip(per_layer, totals) if total.sum() > 0}


def _saved_num_tasks(state_dict: Mapping[str, Any]) -> int | None:
    """K read from the per-task state of a shared parameter (states saved without ``num_tasks``)."""
    for group in state_dict["param_groups"]:
        if not group.get("shared"):
            continue
        for i in group["params"]:
            for key in ("exp_avg_sq", "sum", "balance"):
                value = state_dict["state"].get(i, {}).get(key)
                if isinstance(value, Tensor):
                    return int(value.shape[0])
    return None
