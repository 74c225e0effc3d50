"""DDP semantics: two gloo processes on loopback, each with half of every batch, take exactly the update
one process takes on the whole batch (every method), and the two ranks stay identical."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

import ddp_cases


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
