"""`import mtlopt` pulls no optional package and not mtlopt.benchmarks (run in a core-only venv)."""

import sys

import numpy  # noqa: F401
import torch  # noqa: F401

before = set(sys.modules)
import mtlopt  # noqa: E402

optional = {"matplotlib", "scipy", "sklearn", "pandas", "tqdm", "moocore", "quadprog", "pymoo"}
pulled = sorted({m.split(".")[0] for m in set(sys.modules) - before} & optional)
assert not pulled, f"import mtlopt imported optional packages: {pulled}"
assert not any(m.startswith("mtlopt.benchmarks") for m in sys.modules), (
    "import mtlopt imported mtlopt.benchmarks"
)
print(f"[core] import mtlopt {mtlopt.__version__} ({mtlopt.__file__}) pulls no optional package")
