"""Docstrings state what the code does; measured numbers (times, ratios, percentages) go stale there and
belong in the generated reports (``docs/benchmarks``, ``docs/results``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mtlopt"
# The modules checked so far (issue 16, item 10); add a module once its docstrings are clean.
MODULES = ["alternating.py", "population.py", "mao.py", "preferences.py", "scalarization.py", "gradients.py", "_checks.py"]  # fmt: skip
MEASURED = re.compile(r"\d(?:\.\d+)?\s*(?:ms|µs|us|×|%)(?!\w)|\d(?:\.\d+)?x\b")


def docstrings(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)),
    ]
    return [(getattr(n, "name", "module"), doc) for n in nodes if (doc := ast.get_docstring(n))]


@pytest.mark.parametrize("module", MODULES)
def test_no_measured_numbers_in_docstrings(module):
    found = [
        f"{name}: {match.group(0)!r}"
        for name, doc in docstrings(SRC / module)
        for match in MEASURED.finditer(doc)
    ]
    assert not found, f"{module} docstrings quote measurements (move them to a generated report): {found}"


def test_the_pattern_catches_what_it_should():
    assert MEASURED.search("vmapped 7.3× one model's step") and MEASURED.search("0.113 ms at K = 40")
    assert MEASURED.search("60% above") and MEASURED.search("3x slower")
    assert not MEASURED.search("K = 40 tasks, 1e-3, (ρ = 0.005 per step), O(K²)")
