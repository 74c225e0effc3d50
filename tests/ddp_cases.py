"""Training cases run once in a single process on global batches and once by two gloo processes that
each take half of every batch (tests/test_distributed.py compares them)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import os
import sys
import time
import weakref
from collections.abc import Iterator

import torch
from torch import nn

import mtlopt

STEPS, BATCH, TASKS = 3, 8, 3


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(TASKS))
        self.double()

    def losses(self, x, y, tasks=range(TASKS)):
        z = self.encoder(x)
        return [(self.heads[t](z).squeeze(1) - y[:, t]).pow(2).mean() for t in tasks], z


def batches():
    g = torch.Generator().manual_seed(123)
    return [
        (
            torch.randn(BATCH, 6, generator=g, dtype=torch.float64),
            torch.randn(BATCH, TASKS, generator=g, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def shard(tensor, rank, world):
    size = tensor.shape[0] // world
    return tensor[rank * size : (rank + 1) * size]


def state(model: nn.Module, extra=None) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key, value in (extra or {}).items():
        out[key] = value.detach().clone()
    return out


def weighting_case(make_weighting, mode, **backward_options):
    def run(rank, world):
        model = Net()
        weighting = make_weighting(model)
        params = list(model.parameters()) + (
            list(weighting.parameters()) if isinstance(weighting, nn.Module) else []
        )
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for x, y in batches():
            x, y = shard(x, rank, world), shard(y, rank, world)
            optimizer.zero_grad()
            losses, z = model.losses(x, y)
            kwargs = (
                {"shared_params": model.encoder}
                if mode == "shared"
                else {"features": z}
                if mode == "features"
                else {}
            )
            mtlopt.backward(losses, weighting, **kwargs, **backward_options)
            optimizer.step()
        extra = {
            f"weighting.{k}": v for k, v in weighting.state_dict().items() if isinstance(v, torch.Tensor)
        }
        return state(model, extra)

    return run


def multi_batch_case(make_weighting, **backward_options):
    """A method that reads several batches per step: step s takes batches s, s + 1, ... (cyclically)."""

    def run(rank, world):
        model = Net()
        weighting = make_weighting(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        data = batches()
        for s in range(STEPS):
            optimizer.zero_grad()
            drawn = [data[(s + b) % STEPS] for b in range(weighting.batches_per_step)]
            losses = [model.losses(shard(x, rank, world), shard(y, rank, world))[0] for x, y in drawn]
            mtlopt.backward(
                losses[0], weighting, shared_params=model.encoder, extra_losses=losses[1:], **backward_options
            )
            optimizer.step()
        extra = {
            f"weighting.{k}": v for k, v in weighting.state_dict().items() if isinstance(v, torch.Tensor)
        }
        return state(model, extra)

    return run


def lean_chunks_case(rank, world):
    """The lean Gramian held in two chunks (the update from one more pass): its Gramian, combination
    and factored inputs (the encoder's second layer: Σ_r N_r = 8 < D = 10; the first, D = 6, keeps
    rows)."""
    from mtlopt.distributed import resolve_group
    from mtlopt.lean_gramian import LeanJacobian

    model = Net()
    x, y = batches()[0]
    losses, _ = model.losses(shard(x, rank, world), shard(y, rank, world))
    params = list(model.encoder.parameters())
    jac = LeanJacobian.compute(losses, params, chunks=2, group=resolve_group())
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    return {
        "gramian": jac.gramian(),
        "combined": torch.cat([d.reshape(-1) for d in jac.combine(w)]),
        "factored": torch.tensor(jac.factored_inputs),
        "reached": torch.tensor(jac.reached),
    }


def mao_case(rank, world):
    model = Net()
    optimizer = mtlopt.MAO(
        [{"params": model.encoder.parameters(), "shared": True}, {"params": model.heads.parameters()}],
        num_tasks=TASKS,
        lr=1e-2,
    )
    for x, y in batches():
        optimizer.zero_grad()
        losses, _ = model.losses(shard(x, rank, world), shard(y, rank, world))
        optimizer.backward(losses)
        optimizer.step()
    first = next(iter(model.encoder.parameters()))
    return state(
        model,
        {"exp_avg": optimizer.state[first]["exp_avg"], "exp_avg_sq": optimizer.state[first]["exp_avg_sq"]},
    )


def alternating_case(rank, world):
    model = Net()
    steps = mtlopt.AlternatingSteps(
        model.encoder,
        model.heads,
        functools.partial(torch.optim.Adam, lr=1e-2),
        group_size=2,
        order="shuffled",
        seed=3,
    )
    for x, y in batches():
        x, y = shard(x, rank, world), shard(y, rank, world)
        steps.step(lambda group, x=x, y=y: model.losses(x, y, group)[0])
    return state(model)


def population_case(rank, world):
    members = 4
    mine = range(rank * members // world, (rank + 1) * members // world)
    models = [Net(seed=k) for k in mine]
    population = mtlopt.Population(
        models,
        mtlopt.preference_vectors(3, 15)[:members],
        functools.partial(torch.optim.SGD, lr=0.1),
        scalarization="tchebycheff",
        transfer=mtlopt.Transfer(strength=0.2, neighbours=2),
    )

    def task_losses(model_outputs, targets):
        return torch.stack(
            [(o.squeeze(1) - targets[:, t]).pow(2).mean() for t, o in enumerate(model_outputs)]
        )

    for model in models:  # members map x to the list of task outputs
        model.forward = functools.partial(lambda m, x: [h(m.encoder(x)) for h in m.heads], model)
    for x, y in batches():
        population.step(x, y, task_losses)  # every rank sees the whole batch; members are split
    gathered = population.state_dict()["members"]
    return {f"member{k}.{name}": value for k, member in enumerate(gathered) for name, value in member.items()}


def population_resume_case(rank, world):
    """Per-member EPO states survive a checkpoint: each rank reloads its own members' weighting states."""
    members, rays = 4, [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]
    mine = range(rank * members // world, (rank + 1) * members // world)

    def build():
        models = [Net(seed=k) for k in mine]
        for model in models:
            model.forward = functools.partial(lambda m, x: [h(m.encoder(x)) for h in m.heads], model)
        weightings = [mtlopt.EPO(rays[k]) for k in mine]
        population = mtlopt.Population(
            models,
            torch.tensor(rays, dtype=torch.float64),
            functools.partial(torch.optim.SGD, lr=0.1),
            weightings=weightings,
        )
        return population, weightings

    def task_losses(model_outputs, targets):
        return torch.stack(
            [(o.squeeze(1) - targets[:, t]).pow(2).mean() for t, o in enumerate(model_outputs)]
        )

    population, trained = build()
    for x, y in batches():
        population.step(x, y, task_losses)
    for k, weighting in zip(mine, trained, strict=True):  # make every member's state tell it apart
        weighting.fallbacks += 10 * k
    saved = [population.state_dict()]
    if world > 1:  # every rank resumes from the checkpoint rank 0 wrote
        torch.distributed.broadcast_object_list(saved, src=0)
    fresh, weightings = build()
    fresh.load_state_dict(saved[0])
    local = {k: weighting.state_dict() for k, weighting in zip(mine, weightings, strict=True)}
    parts = [local]
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, local)
    return {
        f"member{k}.{key}": torch.tensor(value)
        for part in parts
        for k, state in part.items()
        for key, value in state.items()
    }


def loss_method_case(make_weighting, epochs=3):
    """A loss-level method over several epochs with its loop hooks: FAMO's update after every step (this
    rank's recomputed losses; update averages them), new_epoch() at each epoch end (DWA, STCH)."""

    def run(rank, world):
        model = Net()
        weighting = make_weighting()
        params = list(model.parameters()) + (
            list(weighting.parameters()) if isinstance(weighting, nn.Module) else []
        )
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for _ in range(epochs):
            for x, y in batches():
                x, y = shard(x, rank, world), shard(y, rank, world)
                optimizer.zero_grad()
                losses, _ = model.losses(x, y)
                mtlopt.backward([loss + 0.1 for loss in losses], weighting)
                optimizer.step()
                if isinstance(weighting, mtlopt.FAMO):
                    with torch.no_grad():
                        weighting.update(torch.stack(model.losses(x, y)[0]) + 0.1)
            if hasattr(weighting, "new_epoch"):
                weighting.new_epoch()
        saved = weighting.state_dict()
        extra = {f"weighting.{k}": v for k, v in saved.items() if isinstance(v, torch.Tensor)}
        extra.update({f"weighting.history{i}": h for i, h in enumerate(saved.get("history", []))})
        return state(model, extra)

    return run


def phn_case(objective):
    """A Pareto hypernetwork over Net: the rays are drawn alike on every rank (one seed)."""

    def run(rank, world):
        from mtlopt.set_learners import PHN, ParetoHypernetwork

        class Losses(Net):
            def forward(self, x, y):
                return torch.stack(self.losses(x, y)[0])

        target = Losses()
        torch.manual_seed(1)
        hypernetwork = ParetoHypernetwork(target, TASKS, hidden_dim=4)
        phn = PHN(hypernetwork, objective=objective, seed=5)
        optimizer = torch.optim.Adam(hypernetwork.parameters(), lr=1e-2)
        for x, y in batches():
            x, y = shard(x, rank, world), shard(y, rank, world)
            ray = phn.sample_ray()
            phn.backward(hypernetwork.call_target(ray, x, y), ray)
            optimizer.step()
            optimizer.zero_grad()
        return state(hypernetwork)

    return run


def cosmos_case(rank, world):
    from mtlopt.set_learners import COSMOS, PreferenceInput

    torch.manual_seed(2)
    net = PreferenceInput(
        nn.Sequential(nn.Linear(6 + TASKS, 8), nn.Tanh(), nn.Linear(8, TASKS)).double(), TASKS
    )
    cosmos = COSMOS(TASKS, penalty=2.0, seed=5, parameters=net.parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in batches():
        x, y = shard(x, rank, world), shard(y, rank, world)
        ray = cosmos.sample_ray()
        losses = (net(x, ray) - y).pow(2).mean(0)
        cosmos.backward(losses, ray)
        optimizer.step()
        optimizer.zero_grad()
    return state(net)


def pamal_case(rank, world):
    """PaMaL over Net: one member per task, a window of two rays drawn alike on every rank, the
    regularization on (its coefficients taken at the losses averaged over the ranks)."""
    from mtlopt.set_learners import PaMaL, WeightEnsemble

    class Losses(Net):
        def forward(self, x, y):
            return torch.stack(self.losses(x, y)[0])

    ensemble = WeightEnsemble([Losses(seed=10 + t) for t in range(TASKS)])
    pamal = PaMaL(ensemble, window=2, penalty=1.0, temperature=3.0, seed=5)
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-2)
    for x, y in batches():
        x, y = shard(x, rank, world), shard(y, rank, world)
        rays = pamal.sample_rays()
        pamal.backward(torch.stack([ensemble.call_target(ray, x, y) for ray in rays]), rays)
        optimizer.step()
        optimizer.zero_grad()
    return state(ensemble)


CASES = {
    "ew": weighting_case(lambda model: mtlopt.EW(), "plain"),
    "fixed": weighting_case(lambda model: mtlopt.FixedWeights([0.2, 0.5, 0.3]), "plain"),
    "mgda": weighting_case(lambda model: mtlopt.MGDA(), "shared"),
    "mgda-normalized": weighting_case(lambda model: mtlopt.MGDA(normalization="loss+", head_weighting="weighted"), "shared"),
    "mgda-ub": weighting_case(lambda model: mtlopt.MGDA(), "features"),
    "mgda-ub-sum": weighting_case(lambda model: mtlopt.MGDA(feature_batch="sum"), "features"),
    "uw": weighting_case(lambda model: mtlopt.UncertaintyWeighting(TASKS, task_types=["regression", "classification", "regression"]).double(), "plain"),
    "gradnorm": weighting_case(lambda model: mtlopt.GradNorm(TASKS, model.encoder[2].parameters(), alpha=1.5), "plain"),
    "pcgrad": weighting_case(lambda model: mtlopt.PCGrad(seed=4), "shared"),
    "pmtl": weighting_case(lambda model: mtlopt.ParetoMTL(mtlopt.preference_vectors(3, 6), index=4, warmup_steps=1), "shared"),
    "epo": weighting_case(lambda model: mtlopt.EPO([0.2, 0.3, 0.5]), "shared"),
    "mao": mao_case,
    "alternating": alternating_case,
    "population": population_case,
    "population-resume": population_resume_case,
    "dwa": loss_method_case(lambda: mtlopt.DWA()),
    "rlw": loss_method_case(lambda: mtlopt.RLW(seed=7)),
    "gls": loss_method_case(lambda: mtlopt.GLS()),
    "si": loss_method_case(lambda: mtlopt.SI()),
    "imtl-l": loss_method_case(lambda: mtlopt.IMTLL(TASKS).double()),
    "famo": loss_method_case(lambda: mtlopt.FAMO(TASKS)),
    "stch": loss_method_case(lambda: mtlopt.STCH(warmup_epochs=0)),
    "imtl-g": weighting_case(lambda model: mtlopt.IMTLG(), "shared"),
    "imtl-g-ub": weighting_case(lambda model: mtlopt.IMTLG(), "features"),
    "imtl": weighting_case(lambda model: mtlopt.IMTL(TASKS).double(), "features"),
    "imtl-shared": weighting_case(lambda model: mtlopt.IMTL(TASKS).double(), "shared"),
    "imtl-features-sum": weighting_case(lambda model: mtlopt.IMTL(TASKS, feature_batch="sum").double(), "features"),
    "aligned-mtl": weighting_case(lambda model: mtlopt.AlignedMTL(), "shared"),
    "aligned-mtl-ub": weighting_case(lambda model: mtlopt.AlignedMTL(), "features"),
    "aligned-mtl-ub-sum": weighting_case(lambda model: mtlopt.AlignedMTL(feature_batch="sum"), "features"),
    "config": weighting_case(lambda model: mtlopt.ConFIG(), "shared"),
    "gradvac": weighting_case(lambda model: mtlopt.GradVac(seed=4), "shared"),
    "gradvac-layer": weighting_case(lambda model: mtlopt.GradVac(seed=4, groups="layer"), "shared"),
    "cagrad": weighting_case(lambda model: mtlopt.CAGrad(), "shared"),
    "cagrad-features": weighting_case(lambda model: mtlopt.CAGrad(rescale="1+c^2", weight_scale="num-tasks"), "features"),
    "upgrad": weighting_case(lambda model: mtlopt.UPGrad(), "shared"),
    "dualproj": weighting_case(lambda model: mtlopt.DualProj(), "features"),
    "nash-mtl": weighting_case(lambda model: mtlopt.NashMTL(update_weights_every=2), "shared"),  # cached α equal on ranks
    "fairgrad": weighting_case(lambda model: mtlopt.FairGrad(), "shared"),
    "excess-mtl": weighting_case(lambda model: mtlopt.ExcessMTL(0.5), "shared"),
    "moco": weighting_case(lambda model: mtlopt.MoCo(0.5, 0.5, rho=0.1), "shared"),
    "db-mtl": weighting_case(lambda model: mtlopt.DBMTL(0.5), "shared"),
    "graddrop": weighting_case(lambda model: mtlopt.GradDrop(leak=0.2, seed=4), "features"),
    "graddrop-shared": weighting_case(lambda model: mtlopt.GradDrop("parameters", seed=4), "shared"),
    "modo": multi_batch_case(lambda model: mtlopt.MoDo(0.5, 0.1)),
    "modo-3": multi_batch_case(lambda model: mtlopt.MoDo(0.5, 0.1, batches=3, head_batches="all", head_weighting="weighted")),
    "sdmgrad": multi_batch_case(lambda model: mtlopt.SDMGrad(head_batches="all", reduction="sum")),
    "sdmgrad-os": multi_batch_case(lambda model: mtlopt.SDMGrad(objectives=1, seed=3)),  # equal draws on ranks
    "lean-mgda": weighting_case(lambda model: mtlopt.MGDA(), "shared", method="lean"),
    "lean-upgrad": weighting_case(lambda model: mtlopt.UPGrad(), "shared", method="lean"),
    "lean-sdmgrad-os": multi_batch_case(lambda model: mtlopt.SDMGrad(objectives=2, seed=3), method="lean"),
    "lean-chunks": lean_chunks_case,
    "phn-ls": phn_case("ls"),
    "phn-epo": phn_case("epo"),
    "cosmos": cosmos_case,
    "pamal": pamal_case,
}  # fmt: skip


def run_cases(rank: int, world: int, names) -> dict[str, dict[str, torch.Tensor]]:
    return {name: CASES[name](rank, world) for name in names}


def join(rank: int, world: int, port: int, timeout: float) -> None:
    """Join the gloo group of the spawned processes (one torch thread each)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),  # a rank left waiting fails instead of hanging
    )


def leave() -> None:
    """Destroy the default group, and check that its gloo backend went with it.

    A group still referenced after ``destroy_process_group`` keeps gloo's threads running into the
    interpreter's shutdown, where one that still has to take the GIL (to release the tensors of the last
    collective) aborts the process: SIGABRT, "terminate called without an active exception".
    """
    group = torch.distributed.group.WORLD
    assert group is not None
    alive = weakref.ref(group)
    del group
    torch.distributed.destroy_process_group()
    gc.collect()
    if alive() is not None:
        raise RuntimeError(
            "the default process group outlived destroy_process_group(): something still holds it, and "
            "its gloo threads can abort the process at exit (import mtlopt before init_process_group)"
        )


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int, timeout: float = 300.0) -> Iterator[None]:
    """In the spawned process's group; on success every rank ends its collectives before any leaves."""
    join(rank, world, port, timeout)
    try:
        yield
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    torch.distributed.barrier()
    leave()


def worker(rank: int, world: int, port: int, names, out_dir: str) -> None:
    """Entry point of each spawned process."""
    with process_group(rank, world, port):
        torch.save(run_cases(rank, world, names), os.path.join(out_dir, f"rank{rank}.pt"))


def lean_unequal_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Ranks with 3 and 5 rows of a batch (the gather pads to the largest): the lean path's Gramian and
    .grad against the held Jacobian's on the same ranks, and "auto" taking the lean path on every rank
    when only rank 0 lacks the memory."""
    from mtlopt import lean_gramian

    with process_group(rank, world, port):
        x, y = batches()[0]
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        out = {}
        for how in ("loop", "lean", "auto"):
            if how == "auto" and rank == 0:
                lean_gramian._free_bytes = lambda device: 1000  # the Jacobian would not fit here only
            model = Net()
            losses, _ = model.losses(x[rows], y[rows])
            result = mtlopt.backward(losses, mtlopt.MGDA(), shared_params=model.encoder, method=how)
            out[how] = {
                "gramian": result.gramian,
                "weights": result.weights,
                "grads": torch.cat([p.grad.reshape(-1) for p in model.parameters()]),
                "lean": torch.tensor("lean_gramian" in result.diagnostics),
            }
        torch.save(out, os.path.join(out_dir, f"unequal{rank}.pt"))


def nan_on_rank_one(rank: int) -> dict[str, str]:
    """Each method with a NaN loss on rank 1 only: what each rank raised (every rank must raise, none wait)."""
    x, y = shard(batches()[0][0], rank, 2), shard(batches()[0][1], rank, 2)
    poison = float("nan") if rank == 1 else 1.0

    def losses(model):
        values, z = model.losses(x, y)
        return [values[0] * poison, *values[1:]], z

    def backward_ew():
        model = Net()
        mtlopt.backward(losses(model)[0], mtlopt.EW())

    def mao():
        model = Net()
        groups = [
            {"params": model.encoder.parameters(), "shared": True},
            {"params": model.heads.parameters()},
        ]
        mtlopt.MAO(groups, num_tasks=TASKS).backward(losses(model)[0])

    def alternating():
        model = Net()
        steps = mtlopt.AlternatingSteps(
            model.encoder, model.heads, functools.partial(torch.optim.SGD, lr=0.1)
        )
        steps.step(lambda group: [losses(model)[0][t] for t in group])

    def population():
        models = [Net(seed=rank)]
        models[0].forward = lambda inputs: [h(models[0].encoder(inputs)) for h in models[0].heads]
        pop = mtlopt.Population(
            models,
            mtlopt.preference_vectors(TASKS, 3)[:2],
            functools.partial(torch.optim.SGD, lr=0.1),
            transfer=mtlopt.Transfer(strength=0.1),
        )
        pop.step(
            x,
            y,
            lambda outputs, targets: torch.stack(
                [
                    (o.squeeze(1) - targets[:, t]).pow(2).mean() * (poison if t == 0 else 1.0)
                    for t, o in enumerate(outputs)
                ]
            ),
        )

    raised = {}
    for name, case in [
        ("backward", backward_ew),
        ("mao", mao),
        ("alternating", alternating),
        ("population", population),
    ]:
        try:
            case()
            raised[name] = "nothing"
        except Exception as error:  # the test compares what each rank raised
            raised[name] = type(error).__name__
    return raised


def nan_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import json

    with process_group(rank, world, port, timeout=60):
        with open(os.path.join(out_dir, f"nan{rank}.json"), "w") as f:
            json.dump(nan_on_rank_one(rank), f)


def teardown_worker(rank: int, world: int, port: int) -> None:
    """Leave while one of gloo's threads still waits for the GIL, as one that releases the tensors of the
    last collective does: ``leave`` must stop gloo's threads before the interpreter shuts down, or the
    process aborts (the NaN test did so about once in ten runs when the machine was loaded)."""
    join(rank, world, port, timeout=60)
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # as in the cases: imports torch._dynamo
    torch.distributed.barrier()
    sys.setswitchinterval(1000.0)  # the main thread keeps the GIL until it blocks
    work = torch.distributed.all_reduce(torch.ones(1), async_op=True)
    pending = work.get_future().then(lambda future: future.value())  # runs on a gloo thread
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:  # the collective completes; its callback waits for the GIL
        pass
    del work, pending
    leave()
