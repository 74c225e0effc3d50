"""DDP semantics: two gloo processes on loopback, each with half of every batch, take exactly the update
one process takes on the whole batch (every method), and the two ranks stay identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import ddp_cases
from mtlopt.benchmarks.trainer import dropped_per_epoch

pytestmark = pytest.mark.cpu_only(reason="gloo DDP: processes on the CPU over loopback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    names = list(ddp_cases.CASES)
    mp.spawn(ddp_cases.worker, args=(2, free_port(), names, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("case", list(ddp_cases.CASES))
def test_two_processes_take_the_single_process_update(two_ranks, case):
    single = ddp_cases.run_cases(0, 1, [case])[case]
    rank0, rank1 = two_ranks[0][case], two_ranks[1][case]
    assert set(rank0) == set(single)
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"{case}: ranks differ in {name}"
        torch.testing.assert_close(
            rank0[name], value, rtol=1e-10, atol=1e-12, msg=f"{case}: {name} differs from one process"
        )


def test_a_nan_on_one_rank_makes_every_rank_raise(tmp_path):
    """No rank is left waiting in a collective when another finds a non-finite loss."""
    mp.spawn(ddp_cases.nan_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    raised = [json.loads((tmp_path / f"nan{rank}.json").read_text()) for rank in range(2)]
    expected = dict.fromkeys(("backward", "mao", "alternating", "population"), "NonFiniteError")
    assert raised == [expected, expected]


def test_a_rank_leaves_cleanly_while_a_gloo_thread_still_needs_the_gil():
    """The NaN test's rare SIGABRT, provoked: a rank leaves while a gloo thread still waits for the GIL
    (as one releasing the last collective's tensors does). The group must be freed at
    destroy_process_group, which stops gloo's threads, not during the interpreter's shutdown (where
    the thread aborts the process); ddp_cases.leave checks that it is."""
    mp.spawn(ddp_cases.teardown_worker, args=(2, free_port()), nprocs=2, join=True)


def test_the_first_optimizer_does_not_keep_the_default_group_alive(tmp_path):
    """torch.optim imports torch.distributed.nn.functional (through torch._dynamo), whose collectives take
    the default group as a default argument; with mtlopt imported first, destroy_process_group frees it."""
    code = f"""
import gc, weakref
import mtlopt, torch
torch.distributed.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
alive = weakref.ref(torch.distributed.group.WORLD)
torch.distributed.destroy_process_group()
gc.collect()
assert alive() is None, "the default group outlived destroy_process_group()"
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


SMALL = ["--benchmark", "multimnist", "--max-sources", "400", "--threads", "1", "--quiet", "--batch-size", "64", "--lr", "0.05", "--epochs", "2"]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "method"),
    [
        ("train", ["mgda-ub"]),
        pytest.param("pareto", ["pmtl", "--num-models", "2"], marks=pytest.mark.slow),
    ],
)
def test_torchrun_cli_equals_one_process(tmp_path, command, method):
    """`torchrun --nproc_per_node 2 -m mtlopt ...` trains what one process trains: the global batch is
    split over the ranks (the members of a set over the ranks) and rank 0 alone writes and reports."""
    env = dict(os.environ, MTLOPT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = ["-m", "mtlopt", command, *SMALL, "--method", *method]
    launchers = {"one": [], "two": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]}
    results, outputs = {}, {}
    for name, launcher in launchers.items():
        run = subprocess.run(
            [sys.executable, *launcher, *args, "--out", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        results[name] = json.loads((tmp_path / name / "result.json").read_text())
        outputs[name] = run.stdout
    assert results["one"]["environment"]["processes"] == 1 and results["two"]["environment"]["processes"] == 2
    key = "test_members" if command == "pareto" else "test"
    for a, b in zip(results["one"]["history"], results["two"]["history"], strict=True):
        np.testing.assert_allclose(_numbers(b[key]), _numbers(a[key]), rtol=1e-4, atol=1e-5)
    lines = {name: text.splitlines() for name, text in outputs.items()}
    assert len(lines["two"]) == len(lines["one"])  # rank 0 reports, as one process does
    reported = [line for line in lines["two"] if not line.startswith("warning:")]
    assert len(reported) == 1 and len(lines["two"]) - len(reported) <= 1  # one result, at most one warning


def _numbers(tree) -> list[float]:
    """The numbers of a nested dict/list, in a fixed order."""
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in _numbers(tree[key])]
    if isinstance(tree, list):
        return [x for item in tree for x in _numbers(item)]
    return [float(tree)]


@pytest.mark.parametrize(
    ("examples", "batch_size", "world", "dropped"),
    [
        (1000, 64, 1, 0),
        (1000, 64, 2, 0),
        (1000, 64, 3, 1),
        (1001, 64, 3, 2),
        (1025, 64, 3, 0),
        (1024, 64, 4, 0),
        (1003, 64, 4, 3),
    ],
)
def test_examples_the_ranks_equal_shares_leave_out(examples, batch_size, world, dropped):
    """Each rank takes an equal share of a batch; the last batch's remainder (a lone example aside) is lost."""
    assert dropped_per_epoch(examples, batch_size, world) == dropped
