"""min_norm refuses a matrix that is not a Gramian, and accepts the round-off of computed ones (issue 16,
item 6: "min_norm accepts an indefinite matrix")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlopt import min_norm


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (
            np.array([[1.0, 2.0], [2.0, 1.0]]),  # violates Cauchy–Schwarz: eigenvalues 3 and -1
            r"positive semi-definite: its most negative eigenvalue is -1; expected >= -0\.1 \(round-off",
        ),
        (-np.eye(3), "most negative eigenvalue is -1; expected >= -0.1"),  # a negated Gramian
        (np.array([[0.0, 1.0], [1.0, 0.0]]), "most negative eigenvalue is -1; expected >= 0 "),
        (np.array([[4.0, 1.0, 3.0], [1.0, 4.0, 3.0], [3.0, 3.0, -1.0]]), "most negative eigenvalue is -"),
        (
            np.array([[1.0, 0.5], [0.2, 1.0]]),  # e.g. the product of two different Jacobians
            r"must be symmetric: G\[0,1\] = 0\.5 but G\[1,0\] = 0\.2; expected a difference <= 0\.1",
        ),
    ],
)
def test_a_matrix_that_is_not_a_gramian_is_refused(matrix: np.ndarray, message: str) -> None:
    for solver in ("auto", "active-set", "frank-wolfe", "pgd"):
        if solver == "active-set" and matrix.shape[0] == 2:
            continue
        with pytest.raises(ValueError, match=message) as error:
            min_norm(matrix, solver=solver)
        assert "\n" not in str(error.value)


def test_an_indefinite_tensor_is_refused_whatever_its_dtype_and_device() -> None:
    bad = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float32)
    with pytest.raises(ValueError, match="positive semi-definite"):
        min_norm(bad)


def low_rank_jacobian(K: int, rank: int, n: int, common: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, n, generator=generator)
    coefficients = torch.randn(K, rank, generator=generator) + common
    return coefficients @ basis / n**0.5


@pytest.mark.parametrize(
    ("dtype", "K", "rank", "n", "common"),
    [
        (torch.bfloat16, 64, 8, 100_000, 3.0),  # products rounded to bfloat16: λ_min ≈ -1.4e-2·max
        (torch.bfloat16, 40, 5, 100_000, 3.0),
        (torch.float16, 64, 8, 100_000, 3.0),
        (torch.float32, 8, 2, 2_000_000, 0.0),  # long float32 sums: λ_min ≈ -1e-5·max
        (torch.float64, 40, 10, 10_000, 1.0),
    ],
)
def test_computed_gramians_pass_with_their_round_off(
    dtype: torch.dtype, K: int, rank: int, n: int, common: float
) -> None:
    """Rank-deficient Gramians computed the way the library computes them (J Jᵀ in the Jacobian's dtype,
    then float64) have negative eigenvalues of round-off size; they are accepted."""
    J = low_rank_jacobian(K, rank, n, common, seed=K + n).to(dtype)
    G = (J @ J.T).double()
    lowest = float(torch.linalg.eigvalsh(G)[0])
    scale = float(G.diagonal().max())
    assert abs(lowest) < 0.05 * scale  # round-off size
    if lowest >= 0.0:  # the sign of the round-off depends on the BLAS kernels: make it negative
        G = G - 2.0 * max(lowest, 1e-15 * scale) * torch.eye(K, dtype=torch.float64)
    assert float(torch.linalg.eigvalsh(G)[0]) < 0.0  # indefinite by round-off
    result = min_norm(G)
    assert result.converged
    assert torch.isclose(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
