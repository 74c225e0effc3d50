import importlib.util
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, settings

from mtlopt._optional import MissingOptionalDependency

# Reproducible by default (CI must not flake); HYPOTHESIS_PROFILE=explore draws new examples.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker keeps to one thread, so
# that the workers do not oversubscribe the cores; a plain pytest run uses up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# --- the device (and dtype) of the tests (TorchJD's PYTEST_TORCH_DEVICE pattern) -------------------------
# MTLOPT_TEST_DEVICE (or TorchJD's name, PYTEST_TORCH_DEVICE) = cpu | cuda | cuda:N | mps. When it is set,
# torch.set_default_device makes every tensor and module the tests create without a device live there,
# and the tests marked `cpu_only` (CPU by nature: gloo DDP, CPU timing) are skipped. Unset, nothing is
# changed: the CPU, as CI runs. MTLOPT_TEST_DTYPE (PYTEST_TORCH_DTYPE) = float32 | float64 sets
# torch's default dtype the same way. `device` and `dtype` are the fixtures. scripts/gpu_check.sh runs
# the suite with MTLOPT_TEST_DEVICE=cuda.
DEVICE_VARIABLES = ("MTLOPT_TEST_DEVICE", "PYTEST_TORCH_DEVICE")
DTYPE_VARIABLES = ("MTLOPT_TEST_DTYPE", "PYTEST_TORCH_DTYPE")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DEVICE_KEY = pytest.StashKey[torch.device]()
_DTYPE_KEY = pytest.StashKey[torch.dtype]()


def _setting(environ, names: tuple[str, ...]) -> str | None:
    values = {name: environ[name].strip() for name in names if environ.get(name, "").strip()}
    if len(set(values.values())) > 1:
        raise pytest.UsageError(f"{' and '.join(f'{k}={v}' for k, v in values.items())} disagree")
    return next(iter(values.values()), None)


def device_from_env(environ=os.environ) -> torch.device | None:
    """The device named by MTLOPT_TEST_DEVICE / PYTEST_TORCH_DEVICE (None: unset), checked to exist."""
    name = _setting(environ, DEVICE_VARIABLES)
    if name is None:
        return None
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise pytest.UsageError(
            f"{DEVICE_VARIABLES[0]}={name}: the tests run on cpu, cuda, cuda:N or mps"
            + (" (meta tensors hold no values)" if name.startswith("meta") else "")
        )
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"{DEVICE_VARIABLES[0]}={name}, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise pytest.UsageError(
                f"{DEVICE_VARIABLES[0]}={name}: {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise pytest.UsageError(f"{DEVICE_VARIABLES[0]}={name}, but MPS is not available")
    return device


def dtype_from_env(environ=os.environ) -> torch.dtype | None:
    """The default dtype named by MTLOPT_TEST_DTYPE / PYTEST_TORCH_DTYPE (None: unset)."""
    name = _setting(environ, DTYPE_VARIABLES)
    if name is None:
        return None
    if name not in DTYPES:
        raise pytest.UsageError(f"{DTYPE_VARIABLES[0]}={name}: one of {', '.join(DTYPES)}")
    return DTYPES[name]


def cpu_only_skip(device: torch.device, item) -> pytest.MarkDecorator | None:
    """The skip of a test marked ``cpu_only`` when the tests run on ``device`` (None: it runs)."""
    marker = item.get_closest_marker("cpu_only")
    if marker is None or device.type == "cpu":
        return None
    why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    return pytest.mark.skip(reason=f"CPU only{f' ({why})' if why else ''}; the tests run on {device}")


def pytest_configure(config) -> None:
    device, dtype = device_from_env(), dtype_from_env()
    config.stash[_DEVICE_KEY] = device or torch.device("cpu")
    config.stash[_DTYPE_KEY] = dtype or torch.get_default_dtype()
    if device is not None:
        torch.set_default_device(device)
    if dtype is not None:
        torch.set_default_dtype(dtype)


def pytest_report_header(config) -> str:
    return f"mtlopt tests on {config.stash[_DEVICE_KEY]}, default dtype {config.stash[_DTYPE_KEY]}"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        skip = cpu_only_skip(config.stash[_DEVICE_KEY], item)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device the tests run on (MTLOPT_TEST_DEVICE; the CPU when unset)."""
    return pytestconfig.stash[_DEVICE_KEY]


@pytest.fixture(scope="session")
def dtype(pytestconfig) -> torch.dtype:
    """The default dtype of the tests (MTLOPT_TEST_DTYPE; torch's default when unset)."""
    return pytestconfig.stash[_DTYPE_KEY]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that reaches a method whose optional package is not installed is skipped, not failed.

    mtlopt refuses such a method at construction with ``MissingOptionalDependency`` (an ImportError
    naming the package); this is what the core-only job (scripts/core_check.sh, no extras) meets. Only
    when the package really is absent: a test that hides it (``sys.modules[...] = None``) still fails.
    """
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is None or not excinfo.errisinstance(MissingOptionalDependency):
        return
    package = excinfo.value.name
    if package and importlib.util.find_spec(package) is None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"optional package {package} not installed")
