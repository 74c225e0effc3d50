"""The installed package: public API, typing marker, and a light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mtlopt

OPTIONAL = ("matplotlib", "pandas", "scipy", "sklearn", "tqdm", "moocore", "quadprog", "hypothesis")


def test_import_does_not_pull_optional_dependencies() -> None:
    # Compared with `import torch, numpy`: torch itself imports some of these (tqdm) when installed.
    code = (
        "import sys, torch, numpy; before = set(sys.modules); import mtlopt; "
        f"print([m for m in set(sys.modules) - before if m.split('.')[0] in {OPTIONAL!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_exported() -> None:
    for name in mtlopt.__all__:
        assert hasattr(mtlopt, name), name
    assert {"backward", "MGDA", "EW", "jacobian", "feature_jacobian", "gramian", "min_norm"} <= set(
        mtlopt.__all__
    )


def test_package_is_typed_and_versioned() -> None:
    assert (Path(mtlopt.__file__).parent / "py.typed").exists()
    assert mtlopt.__version__ != "0+unknown"
