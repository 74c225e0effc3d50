"""One example of every exported method for K tasks, and the fixed inputs of the contract tests.

A method exported from :mod:`mtlopt.weighting` without an entry in :data:`BUILDERS` fails the contract
test: a new method gets the contract by being exported and listed here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import mtlopt
from mtlopt.weighting import Method

F64 = torch.float64


def _probe(K: int) -> list[torch.Tensor]:
    return [nn.Parameter(torch.ones(K, dtype=F64))]


# name → (builder for K tasks and, for a method that names its own layer, that layer; symmetric under
# a relabeling of the tasks?)
BUILDERS: dict[str, tuple[Callable[..., Method], bool]] = {
    "EW": (lambda K, layer=None: mtlopt.EW(), True),
    "FixedWeights": (lambda K, layer=None: mtlopt.FixedWeights([1.0 + t for t in range(K)]), False),
    "UncertaintyWeighting": (lambda K, layer=None: mtlopt.UncertaintyWeighting(K).double(), True),
    "MGDA": (lambda K, layer=None: mtlopt.MGDA(), True),
    "PCGrad": (lambda K, layer=None: mtlopt.PCGrad(seed=3), False),  # random orders: equivariant in law
    "GradNorm": (lambda K, layer=None: mtlopt.GradNorm(K, layer or _probe(K)), True),
    "ParetoMTL": (
        lambda K, layer=None: mtlopt.ParetoMTL(mtlopt.preference_vectors(K, 6 if K == 3 else K), 1),
        False,
    ),
    "EPO": (lambda K, layer=None: mtlopt.EPO([1.0 + 0.5 * t for t in range(K)]), False),
    "DWA": (lambda K, layer=None: mtlopt.DWA(), True),
    "RLW": (lambda K, layer=None: mtlopt.RLW(seed=5), False),  # random draws: equivariant in law
    "GLS": (lambda K, layer=None: mtlopt.GLS(), True),
    "SI": (lambda K, layer=None: mtlopt.SI(), True),
    "IMTLL": (lambda K, layer=None: mtlopt.IMTLL(K).double(), True),
    "FAMO": (lambda K, layer=None: mtlopt.FAMO(K), True),
    "STCH": (lambda K, layer=None: mtlopt.STCH(warmup_epochs=0), True),
    "IMTLG": (lambda K, layer=None: mtlopt.IMTLG(), True),
    "IMTL": (lambda K, layer=None: mtlopt.IMTL(K).double(), True),
    "AlignedMTL": (lambda K, layer=None: mtlopt.AlignedMTL(), True),
    "ConFIG": (lambda K, layer=None: mtlopt.ConFIG(), True),
    "GradVac": (lambda K, layer=None: mtlopt.GradVac(seed=3), False),  # random orders: equivariant in law
    "CAGrad": (lambda K, layer=None: mtlopt.CAGrad(), True),
    "UPGrad": (lambda K, layer=None: mtlopt.UPGrad(), True),
    "DualProj": (lambda K, layer=None: mtlopt.DualProj(), True),
    "NashMTL": (lambda K, layer=None: mtlopt.NashMTL(), True),
    "FairGrad": (lambda K, layer=None: mtlopt.FairGrad(), True),
    "ExcessMTL": (lambda K, layer=None: mtlopt.ExcessMTL(0.5), True),
    "MoCo": (lambda K, layer=None: mtlopt.MoCo(0.5, 0.5, rho=0.1), True),
    "DBMTL": (lambda K, layer=None: mtlopt.DBMTL(0.5), True),
    "GradDrop": (lambda K, layer=None: mtlopt.GradDrop("parameters", seed=3), True),  # the same U
    # two or three batches per step: the contract reads their cross-Gramian (here a Gramian)
    "MoDo": (lambda K, layer=None: mtlopt.MoDo(0.5, 0.1), True),
    "SDMGrad": (lambda K, layer=None: mtlopt.SDMGrad(), True),
}
# The states these builders start from are the methods' initial ones (the contract's reset test); the
# later phases (DWA from epoch 2, FAMO after updates, STCH after its nadir epoch) are checked against
# recorded peer values in tests/weighting/test_loss_methods_peers.py.


def exported_methods() -> list[str]:
    """The concrete method classes exported by mtlopt.weighting."""
    names = []
    for name in mtlopt.weighting.__all__:
        value = getattr(mtlopt.weighting, name)
        bases = (Method, mtlopt.LossWeighting, mtlopt.GramianWeighting, mtlopt.DirectionMethod)
        if isinstance(value, type) and issubclass(value, Method) and value not in bases:
            names.append(name)
    return sorted(names)


def scalar_losses(values, dtype=F64):
    """K losses L_t = θ_t: each ∇_θ L_t is the unit vector e_t, so θ.grad is the weight vector."""
    theta = nn.Parameter(torch.tensor(values, dtype=dtype))
    return theta, list(theta.unbind())


def per_task_gradients(losses, params):
    return [
        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        for loss in losses
    ]


def set_log_variances(uw, values):
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor(values, dtype=F64))


def fixed_inputs(K: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A Gramian with a conflict (task 0 against task 2), positive losses, and its Jacobian."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, 6))
    J[-1] = -0.7 * J[0] + 0.3 * J[-1]
    losses = np.linspace(0.8, 2.0, K)
    return torch.from_numpy(J @ J.T), torch.from_numpy(losses), J


def outputs(method: Method, G: torch.Tensor, L: torch.Tensor, J=None) -> mtlopt.WeightingOutput:
    """One step of any protocol on fixed inputs: the weights and diagnostics. A DirectionMethod reads
    the Jacobian J (with G = J Jᵀ): its "weights" are its reported weights followed by its direction."""
    if isinstance(method, mtlopt.DirectionMethod):
        out = method.compute(torch.as_tensor(J), L)
        return mtlopt.WeightingOutput(torch.cat([out.weights, out.direction.double()]), out.diagnostics)
    if isinstance(method, mtlopt.LossWeighting):
        out = method(L.clone().requires_grad_(True))
        return mtlopt.WeightingOutput(out.weights, out.diagnostics)
    return method.compute(G, L)


def golden_steps(name: str, K: int = 3) -> list[list[float]]:
    """The weights of three consecutive steps (the state matters) on fixed inputs, as floats."""
    method = BUILDERS[name][0](K)
    G, L, J = fixed_inputs(K)
    rows = []
    for step in range(3):
        scale = 1.0 + 0.5 * step
        rows.append(outputs(method, G * scale, L / scale, torch.from_numpy(J) * scale**0.5).weights.tolist())
    return rows


if __name__ == "__main__":  # regenerate the golden values: python tests/weighting/cases.py
    import json
    from pathlib import Path

    golden = {name: golden_steps(name) for name in sorted(BUILDERS)}
    path = Path(__file__).with_name("golden.json")
    path.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {path}")
