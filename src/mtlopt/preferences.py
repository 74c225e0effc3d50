r"""Preference vectors: points on the simplex, one per scalarized subproblem.

- Two objectives: ``num_vectors`` evenly spaced weights, endpoints included:
  :math:`\lambda_i = (1 - i/(N-1),\ i/(N-1))`.
- More objectives: the Das–Dennis lattice (Das & Dennis, SIAM J. Optim. 1998): every vector whose
  components are multiples of 1/H and sum to 1, :math:`\binom{H+m-1}{m-1}` of them.

With ``interior=True`` every vector moves toward the centroid by :math:`1/(H+1)` (two objectives:
:math:`H = N - 1`), which gives :math:`\lambda_i = (1 - (i+\tfrac12)/N,\ (i+\tfrac12)/N)`: no vector puts
zero weight on an objective. Under linear scalarization an end vector such as (1, 0) never trains the
other task's head, so that model's point usually falls outside a hypervolume reference box.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["check_preferences", "das_dennis", "preference_vectors"]


def preference_vectors(num_objectives: int, num_vectors: int, *, interior: bool = False) -> Tensor:
    """``num_vectors`` preference vectors for ``num_objectives`` objectives, shape (N, m), float64.

    For more than two objectives ``num_vectors`` must be a Das–Dennis lattice size
    :math:`\\binom{H+m-1}{m-1}`; the error lists the nearest valid sizes. ``interior``: shrink the
    vectors toward the centroid by 1/(H+1), off the simplex's boundary (see the module docstring).
    """
    if num_objectives < 1 or num_vectors < 1:
        raise ValueError(
            f"need at least one objective and one vector, got {num_objectives} and {num_vectors}"
        )
    if num_objectives == 1:
        return torch.ones(num_vectors, 1, dtype=torch.float64)
    if num_objectives == 2:
        if num_vectors == 1:
            return torch.tensor([[0.5, 0.5]], dtype=torch.float64)
        first = torch.linspace(1.0, 0.0, num_vectors, dtype=torch.float64)
        return _shrink(torch.stack([first, 1.0 - first], dim=1), num_vectors - 1, interior)
    sizes = {}
    for divisions in range(1, 200):
        size = math.comb(divisions + num_objectives - 1, num_objectives - 1)
        sizes[size] = divisions
        if size >= num_vectors:
            break
    if num_vectors not in sizes:
        valid = [*sorted(sizes)[-2:], math.comb(max(sizes.values()) + num_objectives, num_objectives - 1)]
        raise ValueError(
            f"{num_vectors} vectors is not a Das–Dennis lattice size for {num_objectives} objectives; "
            f"nearby sizes: {', '.join(map(str, valid))}"
        )
    return _shrink(das_dennis(num_objectives, sizes[num_vectors]), sizes[num_vectors], interior)


def _shrink(vectors: Tensor, divisions: int, interior: bool) -> Tensor:
    if not interior:
        return vectors
    step = 1.0 / (divisions + 1)
    return (1.0 - step) * vectors + step / vectors.shape[1]


def das_dennis(num_objectives: int, divisions: int) -> Tensor:
    """All vectors with components in {0, 1/H, ..., 1} summing to 1 (H = ``divisions``)."""
    if num_objectives < 1 or divisions < 1:
        raise ValueError(f"need num_objectives >= 1 and divisions >= 1, got {num_objectives} and {divisions}")
    vectors = []
    # Stars and bars: choose the positions of m - 1 bars among H + m - 1 slots.
    for bars in itertools.combinations(range(divisions + num_objectives - 1), num_objectives - 1):
        edges = (-1, *bars, divisions + num_objectives - 1)
        vectors.append([edges[i + 1] - edges[i] - 1 for i in range(num_objectives)])
    return torch.tensor(vectors, dtype=torch.float64) / divisions


def check_preferences(vectors: Tensor, num_objectives: int, tolerance: float = 1e-6) -> Tensor:
    """Return ``vectors`` as a float64 (N, m) tensor after checking it; errors name the bad row."""
    vectors = torch.as_tensor(vectors, dtype=torch.float64)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(
            f"preference vectors must have shape (N, {num_objectives}), got {tuple(vectors.shape)}"
        )
    if vectors.shape[1] != num_objectives:
        raise ValueError(
            f"preference vectors have {vectors.shape[1]} entries, expected {num_objectives} (one per objective)"
        )
    for i, row in enumerate(vectors):
        shown = [float(f"{v:.6g}") for v in row.tolist()]
        if not bool(torch.isfinite(row).all()) or bool((row < 0).any()):
            raise ValueError(f"preference vector {i} is {shown}: entries must be finite and >= 0")
        if abs(float(row.sum()) - 1.0) > tolerance:
            raise ValueError(
                f"preference vector {i} is {shown}, which sums to {float(row.sum()):.6g}; expected 1"
            )
    return vectors
