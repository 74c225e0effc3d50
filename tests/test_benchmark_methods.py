"""The benchmark runners of the peer methods (uw, gradnorm, pcgrad, pmtl, epo) and the method flags."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlopt
from mtlopt.benchmarks.cli import main
from mtlopt.benchmarks.methods import OptimizerSettings, get_method, last_weight_layer
from mtlopt.benchmarks.models import SenerLeNet
from mtlopt.benchmarks.models.vision import SegNetBackbone, VGGMultiTask

SMALL = ["--benchmark", "multimnist", "--max-sources", "1000", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class TwoDigits:
    """The part of a benchmark's data a runner uses: two classification losses, example batches."""

    task_types = ("classification", "classification")

    def task_loss(self, task, output, targets):
        return F.cross_entropy(output, targets[:, task])

    def losses(self, outputs, targets):
        return [self.task_loss(t, o, targets) for t, o in enumerate(outputs)]

    def batch(self, split, index, device):  # GradNorm runs one example batch to find its layer
        x, y = batches(1)[0]
        return x[index].to(device), y[index].to(device)


def batches(count: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8, 2), generator=g)) for _ in range(count)]  # fmt: skip


def make_runner(name: str, options: dict):
    runner = get_method(name)(options, num_tasks=2, seed=3)
    runner.steps_per_epoch = 2
    torch.manual_seed(0)
    runner.build(SenerLeNet, OptimizerSettings("sgd", lr=0.05), total_steps=6, tasks=TwoDigits())
    return runner


def parameters(runner) -> list[torch.Tensor]:
    if runner.produces_set:
        return [p for member in runner.population.member_state_dicts() for p in member.values()]
    return [p.detach().clone() for p in runner.model.parameters()]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("uw", {}),
        ("uw", {"convention": "libmtl"}),
        ("gradnorm", {}),
        ("pcgrad", {}),
        ("pmtl", {"num-models": 2, "warmup-epochs": 1.0}),
        ("epo", {"num-models": 2}),
    ],
)
def test_runner_state_resumes_exactly(name, options):
    """A checkpoint restores the weighting's state too (UW's log-variances, GradNorm's weights and Adam
    moments, PCGrad's order generator, Pareto MTL's phase): the continuation is bitwise the same."""
    data = batches(6)
    runner = make_runner(name, options)
    for x, y in data[:3]:
        runner.train_step(x, y)
    saved = copy.deepcopy(runner.state_dict())
    for x, y in data[3:]:
        logged = runner.train_step(x, y)
    assert all(torch.isfinite(v).all() for v in logged.values())
    resumed = make_runner(name, options)
    resumed.load_state_dict(saved)
    for x, y in data[3:]:
        resumed.train_step(x, y)
    for a, b in zip(parameters(runner), parameters(resumed), strict=True):
        assert torch.equal(a, b)


def test_uw_trains_its_log_variances_with_the_task_types():
    runner = make_runner("uw", {})
    uw = runner._weighting
    assert isinstance(uw, mtlopt.UncertaintyWeighting) and uw.task_types == ("classification",) * 2
    assert any(p is q for p in uw.parameters() for q in runner.optimizer.param_groups[1]["params"])
    assert runner.optimizer.param_groups[1]["weight_decay"] == 0.0
    before = [p.detach().clone() for p in uw.parameters()]
    for x, y in batches(2):
        runner.train_step(x, y)
    assert not all(torch.equal(a, b) for a, b in zip(before, uw.parameters()))


def test_gradnorm_balances_the_last_shared_layer():
    runner = make_runner("gradnorm", {"alpha": 0.5})
    assert runner._weighting.balanced_params == list(runner.model.encoder[-2].parameters())
    assert runner.describe()["balanced_layer"] == "encoder.8 (Linear)"
    for x, y in batches(3):
        weights = runner.train_step(x, y)["weights"]
    assert weights.sum().item() == pytest.approx(2.0) and not torch.equal(weights, torch.ones(2))


def test_the_last_shared_layer_is_the_last_to_run_not_the_last_registered():
    """SegNet registers its decoder blocks in the opposite order to the one it runs them in; ResNet and VGG
    encoders register a BatchNorm last. GradNorm's layer is the last kernel or matrix that runs."""
    segnet = SegNetBackbone(channels=(4, 4, 4, 4, 4))
    assert [n for n, m in segnet.named_modules() if any(p.ndim > 1 for p in m.parameters(False))][
        -1
    ] == "decoder_rest.4.1.0"
    name, layer = last_weight_layer(segnet, torch.randn(1, 3, 32, 32))
    assert name == "decoder_rest.0.0.0" and isinstance(layer, nn.Conv2d)
    vgg = VGGMultiTask(num_tasks=2).encoder
    name, layer = last_weight_layer(vgg, torch.randn(2, 3, 16, 16))
    assert (
        layer is vgg[-3] and isinstance(layer, nn.Linear) and name == str(len(vgg) - 3)
    )  # not vgg[-2], a BN
    vgg.train()
    stats = vgg[1].running_mean.clone()
    last_weight_layer(vgg, torch.randn(2, 3, 16, 16))
    assert vgg.training and torch.equal(vgg[1].running_mean, stats)  # no statistics update, mode restored
    with pytest.raises(ValueError, match="has no layer with a weight"):
        last_weight_layer(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), torch.randn(2, 3))


def test_mtgd_shared_init_starts_every_member_from_the_first():
    shared = make_runner("mtgd", {"num-models": 3, "init": "shared"})
    first, *rest = shared.population.member_state_dicts()
    assert all(torch.equal(first[name], member[name]) for member in rest for name in first)
    a, b, _ = make_runner("mtgd", {"num-models": 3}).population.member_state_dicts()
    assert not torch.equal(a["encoder.0.weight"], b["encoder.0.weight"])  # independent by default
    assert all(torch.equal(a[name], first[name]) for name in a)  # the same draws: member 0 is the same
    x, y = batches(1)[0]
    shared.train_step(x, y)
    after = shared.population.member_state_dicts()
    assert not torch.equal(after[0]["heads.1.3.weight"], after[2]["heads.1.3.weight"])  # own preferences


def test_epo_takes_the_official_scripts_weight_scale_as_an_option():
    assert all(w.weight_scale == "one" for w in make_runner("epo", {"num-models": 2}).population.weightings)
    runner = make_runner("epo", {"num-models": 2, "weight-scale": "num-tasks"})
    assert all(w.weight_scale == "num-tasks" for w in runner.population.weightings)
    assert "head-weighting" not in {o.name for o in get_method("epo").options} | {
        o.name for o in get_method("pmtl").options
    }


def test_pcgrad_matches_the_reference_projection():
    """The benchmark step equals PCGrad computed by hand on the encoder's task gradients."""
    runner = make_runner("pcgrad", {"order": "fixed"})
    x, y = batches(1)[0]
    model = copy.deepcopy(runner.model)
    z = model.encoder(x)
    losses = TwoDigits().losses([head(z) for head in model.heads], y)
    shared = list(model.encoder.parameters())
    g = [torch.cat([t.flatten() for t in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]  # fmt: skip
    projected = []
    for i, j in ((0, 1), (1, 0)):
        dot = g[i] @ g[j]
        projected.append(g[i] - min(dot, 0.0) / (g[j] @ g[j]) * g[j])
    expected = projected[0] + projected[1]
    runner.optimizer.param_groups[0]["momentum"] = 0.0
    before = torch.cat([p.detach().flatten() for p in runner.model.encoder.parameters()])
    runner.train_step(x, y)
    after = torch.cat([p.detach().flatten() for p in runner.model.encoder.parameters()])
    torch.testing.assert_close((before - after) / 0.05, expected, rtol=1e-4, atol=1e-6)


def test_set_runners_record_rays_and_member_weightings():
    pmtl = make_runner("pmtl", {"num-models": 3, "warmup-epochs": 0.5})
    assert [w.warmup_steps for w in pmtl.population.weightings] == [1, 1, 1]
    assert [w.index for w in pmtl.population.weightings] == [0, 1, 2]
    rays = torch.tensor(pmtl.describe()["rays"], dtype=torch.float64)
    torch.testing.assert_close(rays.norm(dim=1), torch.ones(3, dtype=torch.float64))
    epo = make_runner("epo", {"num-models": 3})
    preferences = torch.stack([w.preference for w in epo.population.weightings])
    assert (preferences > 0).all()  # EPO needs r > 0: rays strictly inside the quadrant
    angles = torch.atan2(preferences[:, 1], preferences[:, 0])
    torch.testing.assert_close(angles, torch.tensor([1e-4, 0.5, 1 - 1e-4], dtype=torch.float64) * math.pi / 2)


def test_baselines_compare_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *SMALL, "--methods", "ew,uw,gradnorm,pcgrad", "--seeds", "1", "--epochs", "2", "--lr", "0.05"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    for label in ("ew", "uw", "gradnorm", "pcgrad"):
        result = json.loads((out / "runs" / label / "seed0" / "result.json").read_text())
        assert all(math.isfinite(v["accuracy"]) for v in result["final"]["test"].values())
        first, last = (sum(h["train"]["loss"]) for h in (result["history"][0], result["history"][-1]))
        assert last < first  # the training loss falls
        assert f"| `{label}` |" in summary


@pytest.mark.parametrize("method", ["pmtl", "epo"])
def test_ray_sets_spread_their_members_along_the_rays(tmp_path, method):
    """After 3 epochs the members' test losses are ordered as their rays: for EPO member k approaches
    r_k ⊙ L ∝ 1 (member 0 favours the left task); for Pareto MTL the angle of L grows with the ray's."""
    out = tmp_path / method
    args = ["pareto", *SMALL, "--method", method, "--num-models", "3", "--lr", "0.05", "--epochs", "3"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    members = result["history"][-1]["test_members"]
    left = [m["left"]["cross_entropy"] for m in members]
    right = [m["right"]["cross_entropy"] for m in members]
    angle = [math.atan2(r, lo) for lo, r in zip(left, right)]
    if method == "epo":
        assert left[0] < left[2] and right[2] < right[0]
    else:
        assert angle[0] < angle[1] < angle[2]
    assert len(result["rays"]) == 3 and (out / "front.png").exists()


def test_a_flag_is_checked_by_each_method_that_accepts_it(tmp_path, capsys):
    # --weight-scale means Σw = 1 or K for mgda but paper or code scaling for pmtl: each checks its own.
    args = ["compare", *SMALL, "--methods", "mgda,pmtl", "--weight-scale", "none", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--weight-scale (mgda): 'none'; expected one of one, num-tasks" in capsys.readouterr().err
    args = ["train", *SMALL, "--method", "pcgrad", "--order", "sideways", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--order (pcgrad): 'sideways'; expected one of shuffled, fixed" in capsys.readouterr().err
    args = ["pareto", *SMALL, "--method", "pmtl", "--warmup-epochs", "-1", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--warmup-epochs (pmtl) '-1': expected a number >= 0, got -1.0" in capsys.readouterr().err
