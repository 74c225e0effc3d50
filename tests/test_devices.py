"""The device plumbing of the tests (tests/conftest.py): MTLOPT_TEST_DEVICE or TorchJD's
PYTEST_TORCH_DEVICE names the device (MTLOPT_TEST_DTYPE the default dtype), the ``device`` and ``dtype``
fixtures, and the skip of the ``cpu_only`` tests on another device.

Without a GPU the plumbing is checked on the CPU: the names are parsed and refused here, and a small
subset of the suite runs in a subprocess with ``MTLOPT_TEST_DEVICE=cpu`` set explicitly (so that
``torch.set_default_device`` is active, as it is on cuda). scripts/gpu_check.sh runs the whole suite with
``MTLOPT_TEST_DEVICE=cuda``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ("MTLOPT_TEST_DEVICE", "PYTEST_TORCH_DEVICE", "MTLOPT_TEST_DTYPE", "PYTEST_TORCH_DTYPE")


@pytest.fixture(scope="module")
def plumbing():
    """tests/conftest.py as a module of its own (its helpers are plain functions)."""
    spec = importlib.util.spec_from_file_location("_mtlopt_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensors_and_modules_follow_the_test_device(device, dtype):
    """What every device-independent test relies on: a tensor or module made without a device lives on
    the test device, in the test dtype (run on cuda by scripts/gpu_check.sh)."""
    for tensor in (torch.zeros(3), torch.randn(2, 2), nn.Linear(2, 2).weight, torch.tensor([1.0, 2.0])):
        assert tensor.device.type == device.type
        assert device.index is None or tensor.device.index == device.index
        assert tensor.dtype == dtype
    assert (torch.ones(2) @ torch.ones(2)).item() == 2.0


def test_unset_changes_nothing(plumbing):
    assert plumbing.device_from_env({}) is None and plumbing.dtype_from_env({}) is None
    assert plumbing.device_from_env({"MTLOPT_TEST_DEVICE": "  "}) is None


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"MTLOPT_TEST_DEVICE": "cpu"}, "cpu"),
        ({"PYTEST_TORCH_DEVICE": "cpu"}, "cpu"),
        ({"MTLOPT_TEST_DEVICE": " cpu ", "PYTEST_TORCH_DEVICE": "cpu"}, "cpu"),
    ],
)
def test_either_name_selects_the_device(plumbing, environ, expected):
    assert plumbing.device_from_env(environ) == torch.device(expected)


@pytest.mark.parametrize(
    "value, message",
    [
        ("meta", "meta tensors hold no values"),
        ("meta:0", "meta tensors hold no values"),
        ("gpu", "cpu, cuda, cuda:N or mps"),
        ("cuda:x", "cpu, cuda, cuda:N or mps"),
        ("CPU", "cpu, cuda, cuda:N or mps"),
        ("cpu:0", "cpu, cuda, cuda:N or mps"),
    ],
)
def test_other_names_are_refused(plumbing, value, message):
    with pytest.raises(pytest.UsageError, match=message):
        plumbing.device_from_env({"MTLOPT_TEST_DEVICE": value})


def test_the_two_names_must_agree(plumbing):
    with pytest.raises(pytest.UsageError, match="disagree"):
        plumbing.device_from_env({"MTLOPT_TEST_DEVICE": "cpu", "PYTEST_TORCH_DEVICE": "cuda"})


def test_cuda_must_exist(plumbing, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.UsageError, match="CUDA is not available"):
        plumbing.device_from_env({"PYTEST_TORCH_DEVICE": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert plumbing.device_from_env({"MTLOPT_TEST_DEVICE": "cuda"}) == torch.device("cuda")
    assert plumbing.device_from_env({"MTLOPT_TEST_DEVICE": "cuda:1"}) == torch.device("cuda", 1)
    with pytest.raises(pytest.UsageError, match="2 CUDA device"):
        plumbing.device_from_env({"MTLOPT_TEST_DEVICE": "cuda:2"})


def test_dtype_names(plumbing):
    assert plumbing.dtype_from_env({"MTLOPT_TEST_DTYPE": "float64"}) is torch.float64
    assert plumbing.dtype_from_env({"PYTEST_TORCH_DTYPE": "float32"}) is torch.float32
    with pytest.raises(pytest.UsageError, match="float32, float64"):
        plumbing.dtype_from_env({"MTLOPT_TEST_DTYPE": "half"})


class _Item:
    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def get_closest_marker(self, name: str):
        return next((m for m in self.marks if m.name == name), None)


@pytest.mark.parametrize("mark", [pytest.mark.cpu_only(reason="gloo DDP"), pytest.mark.cpu_only("gloo DDP")])
def test_cpu_only_tests_are_skipped_on_another_device(plumbing, mark):
    item = _Item(pytest.mark.slow, mark)
    assert plumbing.cpu_only_skip(torch.device("cpu"), item) is None
    skip = plumbing.cpu_only_skip(torch.device("cuda"), item)
    assert skip is not None and skip.mark.name == "skip"
    assert skip.mark.kwargs["reason"] == "CPU only (gloo DDP); the tests run on cuda"
    assert plumbing.cpu_only_skip(torch.device("cuda"), _Item(pytest.mark.slow)) is None
    bare = plumbing.cpu_only_skip(torch.device("mps"), _Item(pytest.mark.cpu_only))
    assert bare is not None and bare.mark.kwargs["reason"] == "CPU only; the tests run on mps"


def _pytest(*args: str, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES and not k.startswith("PYTEST_XDIST")}
    env.update(variables, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_subset_runs_with_the_device_set_explicitly():
    """The suite's own machinery under an active ``torch.set_default_device``: the canary above, a
    device-independent file, and a ``cpu_only`` test (which runs: the device is the CPU)."""
    run = _pytest(
        "tests/test_devices.py::test_tensors_and_modules_follow_the_test_device",
        "tests/weighting/test_weight_sum.py",
        "tests/test_distributed.py::test_examples_the_ranks_equal_shares_leave_out",
        "-m",
        "not slow",
        MTLOPT_TEST_DEVICE="cpu",
        MTLOPT_TEST_DTYPE="float32",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "mtlopt tests on cpu, default dtype torch.float32" in run.stdout
    assert " passed" in run.stdout and "skipped" not in run.stdout and "failed" not in run.stdout


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"MTLOPT_TEST_DEVICE": "meta"}, "meta tensors hold no values"),
        ({"MTLOPT_TEST_DEVICE": "cuda:1", "PYTEST_TORCH_DEVICE": "cuda"}, "disagree"),
        ({"MTLOPT_TEST_DTYPE": "bfloat16"}, "float32, float64"),
    ],
)
def test_a_bad_setting_stops_the_run_at_configuration(plumbing, monkeypatch, variables, message):
    """pytest_configure reads the environment and raises pytest's usage error (exit status 4)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    class Config:
        stash = pytest.Stash()

    with pytest.raises(pytest.UsageError, match=message):
        plumbing.pytest_configure(Config())
