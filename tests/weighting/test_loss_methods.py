"""The loss-level methods of issue 18 (DWA, RLW, GLS, SI, IMTL-L, FAMO, STCH): each rule against an
independent computation (autograd of the method's stated objective, or the formula by hand), the loop
hooks, exact resume from a state saved mid-epoch, and the one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtlopt

F64 = torch.float64


def thetas(values):
    """Losses L_t = θ_t: θ.grad is the weight vector of the step."""
    theta = nn.Parameter(torch.tensor(values, dtype=F64))
    return theta, list(theta.unbind())


def step(method, values):
    theta, losses = thetas(values)
    result = mtlopt.backward(losses, method)
    torch.testing.assert_close(theta.grad, result.weights, rtol=1e-12, atol=0)
    return result.weights


def loss_stream(K=3, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(K, generator=g, dtype=F64) + 0.2) * (1.0 - 0.05 * s) for s in range(steps)]


# DWA ------------------------------------------------------------------------------------------------


def test_dwa_uses_the_ratio_of_the_last_two_epoch_means_from_epoch_two():
    dwa = mtlopt.DWA(temperature=2.0)
    stream = loss_stream(steps=9)
    means = []
    for epoch in range(3):
        chunk = stream[3 * epoch : 3 * epoch + 3]
        for values in chunk:
            w = step(dwa, values.tolist())
            if epoch < 2:
                assert torch.equal(w, torch.ones(3, dtype=F64))
            else:
                r = means[1] / means[0]
                torch.testing.assert_close(
                    w, 3 * torch.exp(r / 2) / torch.exp(r / 2).sum(), rtol=1e-12, atol=0
                )
        means.append(torch.stack(chunk).mean(0))
        dwa.new_epoch()
    assert dwa.epoch == 3


def test_dwa_refuses_an_epoch_without_steps():
    with pytest.raises(RuntimeError, match="DWA.new_epoch: no step since the start of epoch 0"):
        mtlopt.DWA().new_epoch()
    dwa = mtlopt.DWA()
    step(dwa, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"DWA: the epoch-mean loss of tasks \[1\] is 0 at epoch 0"):
        dwa.new_epoch()
    negative = mtlopt.DWA()  # negative losses (e.g. log-likelihoods) have positive ratios
    for values in ([-2.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]):
        w = step(negative, values)
        negative.new_epoch()
    r = torch.tensor([0.5, 1.0], dtype=F64)
    torch.testing.assert_close(w, 2 * torch.softmax(r / 2, 0), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="DWA temperature must be a finite number > 0, got 0"):
        mtlopt.DWA(temperature=0)


# RLW ------------------------------------------------------------------------------------------------


def test_rlw_draws_softmax_of_normal_weights_from_its_own_seeded_generator():
    torch.manual_seed(99)
    a, b = mtlopt.RLW(seed=4), mtlopt.RLW(seed=4)
    g = torch.Generator().manual_seed(4)
    for values in loss_stream(steps=5):
        w = step(a, values.tolist())
        assert torch.equal(w, step(b, values.tolist()))  # every rank, seeded alike, draws alike
        expected = torch.softmax(torch.randn(3, generator=g).double(), 0)
        torch.testing.assert_close(w, expected, rtol=1e-15, atol=0)
        assert float(w.sum()) == pytest.approx(1.0, rel=1e-15)
    assert not torch.equal(step(mtlopt.RLW(seed=4), [1.0, 1, 1]), step(mtlopt.RLW(seed=5), [1.0, 1, 1]))
    with pytest.raises(ValueError, match="RLW seed must be an int >= 0, got -1"):
        mtlopt.RLW(seed=-1)


# GLS and SI -----------------------------------------------------------------------------------------


def test_gls_has_the_gradient_of_the_geometric_mean_even_for_many_tiny_losses():
    values = [0.3, 1.7, 4.0]
    theta, _ = thetas(values)
    (grad,) = torch.autograd.grad(theta.prod() ** (1 / 3), theta)
    torch.testing.assert_close(step(mtlopt.GLS(), values), grad, rtol=1e-12, atol=0)
    many = [1e-30] * 40  # the product underflows to 0; exp(mean log) does not
    w = step(mtlopt.GLS(), many)
    torch.testing.assert_close(w, torch.full((40,), 1 / 40, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", [mtlopt.GLS(), mtlopt.SI(), mtlopt.STCH()])
def test_log_methods_refuse_non_positive_losses_naming_the_tasks(method):
    who = type(method).__name__
    with pytest.raises(ValueError, match=rf"{who} needs every loss.* > 0; tasks \[1\] have -0.5"):
        step(method, [1.0, -0.5, 2.0])


def test_si_is_invariant_to_rescaling_a_loss():
    def update(scale):
        w = nn.Parameter(torch.tensor([0.4, -0.3], dtype=F64))
        losses = [(w**2).sum() + 0.5, scale * ((w - 1) ** 2).sum()]
        mtlopt.backward(losses, mtlopt.SI())
        return w.grad

    torch.testing.assert_close(update(1.0), update(1e6), rtol=1e-10, atol=0)
    torch.testing.assert_close(
        step(mtlopt.SI([2.0, 1.0], eps=0.5), [0.5, 1.5]), torch.tensor([2.0, 0.5], dtype=F64)
    )
    with pytest.raises(ValueError, match="SI was set up for 2 tasks but got 3 losses"):
        step(mtlopt.SI([2.0, 1.0]), [1.0, 1.0, 1.0])


# IMTL-L ---------------------------------------------------------------------------------------------


def test_imtl_l_weights_are_exp_s_and_the_scales_get_exp_s_l_minus_one():
    imtl = mtlopt.IMTLL(3).double()
    with torch.no_grad():
        imtl.scales.copy_(torch.tensor([-0.5, 0.0, 0.7], dtype=F64))
    values = [0.8, 1.4, 2.0]
    w = step(imtl, values)
    torch.testing.assert_close(w, imtl.scales.detach().exp(), rtol=1e-15, atol=0)
    expected = imtl.scales.detach().exp() * torch.tensor(values, dtype=F64) - 1
    torch.testing.assert_close(imtl.scales.grad, expected, rtol=1e-12, atol=0)


# FAMO -----------------------------------------------------------------------------------------------


def test_famo_logit_gradient_is_the_softmax_vjp_of_the_log_loss_decrease():
    famo = mtlopt.FAMO(3, lr=0.1, weight_decay=0.0)
    reference = torch.zeros(3, dtype=F64, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.1)
    for before in loss_stream(steps=6):
        after = before * torch.tensor([0.9, 0.7, 0.95], dtype=F64)
        z = torch.softmax(reference.detach(), 0)
        w = step(famo, before.tolist())
        D = before + 1e-8  # eps
        torch.testing.assert_close(w, (z / D) / (z / D).sum(), rtol=1e-12, atol=0)
        famo.update(after)
        delta = D.log() - (after + 1e-8).log()
        (grad,) = torch.autograd.grad(torch.softmax(reference, 0), reference, delta)
        reference.grad = grad
        adam.step()
        torch.testing.assert_close(famo.logits.detach(), reference.detach(), rtol=1e-12, atol=1e-15)
    assert float(famo.logits.detach().max() - famo.logits.detach().min()) > 1e-2


def test_famo_update_needs_one_step_first_and_k_new_losses():
    famo = mtlopt.FAMO(2)
    with pytest.raises(RuntimeError, match="FAMO.update needs the losses of a step first"):
        famo.update(torch.ones(2))
    step(famo, [1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"FAMO.update needs 2 new losses \(one per task\), got shape \(3,\)"
    ):
        famo.update(torch.ones(3))
    famo.update(torch.ones(2))
    with pytest.raises(RuntimeError, match="FAMO.update needs the losses of a step first"):
        famo.update(torch.ones(2))  # one update per step
    with pytest.raises(ValueError, match="FAMO weight_decay must be a finite number >= 0, got -1"):
        mtlopt.FAMO(2, weight_decay=-1)


def test_famo_update_takes_the_losses_as_backward_does():
    """A list (or mapping) of scalar losses, as mtlopt.backward takes them, equals the stacked tensor."""
    logits = []
    for form in ("tensor", "list", "mapping"):
        famo = mtlopt.FAMO(2)
        step(famo, [1.0, 2.0])
        new = [torch.tensor(0.5), torch.tensor(1.5)]
        famo.update(
            {"a": new[0], "b": new[1]} if form == "mapping" else new if form == "list" else torch.stack(new)
        )
        logits.append(famo.logits.detach().clone())
    assert float((logits[0] - torch.zeros(2)).abs().max()) > 0
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)
    torch.testing.assert_close(logits[2], logits[0], rtol=0, atol=0)
    famo = mtlopt.FAMO(2)
    step(famo, [1.0, 2.0])
    with pytest.raises(TypeError, match="FAMO.update needs the new losses as scalar tensors"):
        famo.update([torch.ones(2), torch.ones(2)])


# STCH -----------------------------------------------------------------------------------------------


def official_stch_weights(values, epoch, warmup, nadir, mu):
    """Autograd of the official objective (Xi-L/STCH, LibMTL STCH.backward) at the loss values."""
    L = values.clone().requires_grad_(True)
    if epoch <= warmup:
        objective = torch.log(L + 1e-20).sum()
    else:
        f = torch.log(L / nadir + 1e-20)
        objective = mu * torch.log(torch.exp((f - f.detach().max()) / mu).sum()) * L.shape[0]
    (grad,) = torch.autograd.grad(objective, L)
    return grad


@pytest.mark.parametrize("mu", [1.0, 0.1])
def test_stch_follows_the_official_warmup_nadir_and_smooth_max_phases(mu):
    stch = mtlopt.STCH(mu, warmup_epochs=1)
    stream = loss_stream(steps=12)
    nadir_values = []
    for epoch in range(4):
        for values in stream[3 * epoch : 3 * epoch + 3]:
            if epoch == 1:
                nadir_values.append(values)
            nadir = torch.stack(nadir_values).mean(0) if epoch > 1 else None
            expected = official_stch_weights(values, epoch, 1, nadir, mu)
            torch.testing.assert_close(step(stch, values.tolist()), expected, rtol=1e-10, atol=0)
        stch.new_epoch()
    torch.testing.assert_close(stch.nadir, torch.stack(nadir_values).mean(0), rtol=1e-15, atol=0)


def test_stch_plain_transform_is_the_smooth_max_of_the_raw_losses():
    values = torch.tensor([0.5, 1.5, 1.0], dtype=F64)
    lam, ref = torch.tensor([0.2, 0.5, 0.3], dtype=F64), torch.tensor([0.1, 0.0, 0.2], dtype=F64)
    L = values.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * torch.logsumexp(lam * (L - ref) / 0.5, 0), L)
    w = step(mtlopt.STCH(0.5, transform="none", preference=lam, reference=ref), values.tolist())
    torch.testing.assert_close(w, grad, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="STCH preference and reference apply to transform='none' only"):
        mtlopt.STCH(preference=[1.0, 1.0])
    with pytest.raises(ValueError, match="STCH transform must be one of 'log-normalized', 'none'; got 'raw'"):
        mtlopt.STCH(transform="raw")


def test_stch_without_a_step_in_its_nadir_epoch_says_so():
    stch = mtlopt.STCH(warmup_epochs=0)
    stch.new_epoch()
    with pytest.raises(RuntimeError, match="STCH took no step in its nadir epoch 0"):
        step(stch, [1.0, 2.0])


# Resume ---------------------------------------------------------------------------------------------


def stateful(name):
    return {
        "DWA": lambda: mtlopt.DWA(),
        "RLW": lambda: mtlopt.RLW(seed=2),
        "FAMO": lambda: mtlopt.FAMO(3),
        "STCH": lambda: mtlopt.STCH(warmup_epochs=1),
    }[name]()


def drive(method, stream, start, stop):
    weights = []
    for i in range(start, stop):
        weights.append(step(method, stream[i].tolist()))
        if isinstance(method, mtlopt.FAMO):
            method.update(stream[i] * 0.9 + 0.01 * i)
        if hasattr(method, "new_epoch") and i % 3 == 2:
            method.new_epoch()
    return torch.stack(weights)


@pytest.mark.parametrize("name", ["DWA", "RLW", "FAMO", "STCH"])
def test_a_state_saved_mid_epoch_resumes_exactly(name):
    stream = loss_stream(steps=15)
    method = stateful(name)
    drive(method, stream, 0, 7)  # epoch 2, one step in
    saved = copy.deepcopy(method.state_dict())
    expected = drive(method, stream, 7, 15)
    resumed = stateful(name)
    resumed.load_state_dict(saved)
    assert torch.equal(drive(resumed, stream, 7, 15), expected)
    fresh = stateful(name)
    assert not torch.equal(drive(fresh, stream, 7, 15), expected)  # the state mattered
