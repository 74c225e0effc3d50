"""The contract every exported method passes (TorchJD's pattern): one parametrized test per property.

Golden values: ``tests/weighting/golden.json``, written by ``python tests/weighting/cases.py`` from
this implementation (after the agreement tests against the peers pass); they pin the numbers, so
that any drift fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from cases import BUILDERS, exported_methods, fixed_inputs, golden_steps, outputs

import mtlopt

GOLDEN = json.loads(Path(__file__).with_name("golden.json").read_text())
NAMES = sorted(BUILDERS)


def test_every_exported_method_has_a_contract_case_and_golden_values():
    assert exported_methods() == NAMES
    assert sorted(GOLDEN) == NAMES


def matches_golden(name: str) -> bool:
    rows = golden_steps(name)
    return all(
        row == pytest.approx(expected, rel=1e-9, abs=1e-12) for row, expected in zip(rows, GOLDEN[name])
    )


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_k_finite_float64_values_and_match_the_golden_ones(name):
    G, L, J = fixed_inputs()
    width = 3 + (J.shape[1] if isinstance(BUILDERS[name][0](3), mtlopt.DirectionMethod) else 0)
    for row in golden_steps(name):
        assert len(row) == width and all(torch.isfinite(torch.tensor(row)))
    assert matches_golden(name)
    out = outputs(BUILDERS[name][0](3), G, L, torch.from_numpy(J))
    assert out.weights.dtype == torch.float64 and out.weights.shape == (width,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", [0, 2])
def test_moving_a_methods_output_by_1e_6_fails_the_golden_comparison(name, task, monkeypatch):
    cls = type(BUILDERS[name][0](3))
    if issubclass(cls, mtlopt.DirectionMethod):  # its direction moved (DB-MTL's weights are ones)
        direct = cls.direct

        def moved_direction(self, *args):
            out = direct(self, *args)
            direction = out.direction.clone()
            direction[task] += 1e-6
            return mtlopt.DirectionOutput(direction, out.weights, out.diagnostics)

        monkeypatch.setattr(cls, "direct", moved_direction)
        assert not matches_golden(name)
        return
    weigh = cls.weigh

    def moved(self, *args):
        out = weigh(self, *args)
        weights = out.weights.clone()
        weights[task] += 1e-6
        return mtlopt.WeightingOutput(weights, out.diagnostics)

    monkeypatch.setattr(cls, "weigh", moved)
    assert not matches_golden(name)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_exactly_and_a_foreign_state_is_refused(name):
    build = BUILDERS[name][0]
    G, L, J = fixed_inputs()
    J = torch.from_numpy(J)
    a = build(3)
    outputs(a, G, L, J)
    state = copy.deepcopy(a.state_dict())
    b = build(3)
    b.load_state_dict(state)
    for scale in (1.5, 0.5):
        wa = outputs(a, G * scale, L / scale, J * scale**0.5).weights
        wb = outputs(b, G * scale, L / scale, J * scale**0.5).weights
        assert torch.equal(wa, wb)
    with pytest.raises((ValueError, RuntimeError, KeyError)):
        b.load_state_dict({"not_a_key": torch.zeros(1)})
    a.reset()
    fresh = build(3)
    assert torch.equal(outputs(a, G, L, J).weights, outputs(fresh, G, L, J).weights)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_number_of_tasks_and_malformed_input_are_refused_with_named_errors(name):
    method = BUILDERS[name][0](3)
    who = type(method).__name__
    G, L, J = fixed_inputs()
    if isinstance(method, mtlopt.DirectionMethod):  # the same checks on the K×P Jacobian
        J = torch.from_numpy(J)
        with pytest.raises(ValueError, match=who):
            method.compute(J[0], L)
        with pytest.raises(ValueError, match=who):
            method.compute(J, L[:2])
        bad = J.clone()
        bad[1, 2] = float("nan")
        with pytest.raises(mtlopt.NonFiniteError, match=rf"{who}: non-finite Jacobian entries in rows \[1\]"):
            method.compute(bad, L)
        with pytest.raises(TypeError, match=who):
            method.compute(J.numpy(), L)
        return
    if isinstance(method, mtlopt.LossWeighting):
        if method.num_tasks is not None:
            with pytest.raises(ValueError, match=who):
                method(torch.ones(2, dtype=torch.float64, requires_grad=True))
        with pytest.raises(ValueError, match=who):
            method(torch.ones(3, 1, dtype=torch.float64, requires_grad=True))
        with pytest.raises(TypeError, match=who):
            method([1.0, 2.0, 3.0])
        return
    if method.num_tasks is not None:
        with pytest.raises(ValueError, match=who):
            method.compute(G[:2, :2], L[:2])
    else:
        small = BUILDERS[name][0](1)
        if small.min_tasks > 1:
            with pytest.raises(ValueError, match=f"{who} needs at least"):
                small.compute(G[:1, :1], L[:1])
    with pytest.raises(ValueError, match=who):
        method.compute(G[:, :2], L)
    with pytest.raises(ValueError, match=who):
        method.compute(G, L[:2])
    bad = G.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(mtlopt.NonFiniteError, match=rf"{who}: non-finite Gramian entries in rows \[1\]"):
        method.compute(bad, L)
    with pytest.raises(TypeError, match=who):
        method.compute(G.numpy(), L)


@pytest.mark.parametrize("name", [n for n in NAMES if BUILDERS[n][1]])
def test_symmetric_methods_are_permutation_equivariant(name):
    G, L, J = fixed_inputs()
    J = torch.from_numpy(J)
    perm = torch.tensor([2, 0, 1])
    w = outputs(BUILDERS[name][0](3), G, L, J).weights
    w_perm = outputs(BUILDERS[name][0](3), G[perm][:, perm], L[perm], J[perm]).weights
    if isinstance(BUILDERS[name][0](3), mtlopt.DirectionMethod):  # the same direction, weights permuted
        perm = torch.cat([perm, torch.arange(3, w.numel())])
    torch.testing.assert_close(w_perm, w[perm], rtol=1e-10, atol=1e-12)
