"""Every Python example in the README and docs runs, and the examples/ scripts run."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run_in_order(path: Path) -> None:
    namespace: dict = {"__name__": "__doc_example__"}
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), namespace)


def test_readme_has_runnable_examples() -> None:
    assert len(python_blocks(ROOT / "README.md")) >= 3


def test_digits_example_runs(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["digits_two_tasks.py", "--epochs", "1", "--seeds", "1"])
    runpy.run_path(str(ROOT / "examples" / "digits_two_tasks.py"), run_name="__main__")
    table = capsys.readouterr().out
    for method in ("ew", "mgda", "mgda-ub"):
        assert f"| {method} |" in table


def test_files_the_readme_names_exist() -> None:
    """Every committed result, benchmark script and example the README points to is in the repository."""
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`((?:docs|tools|examples|scripts)/[^`\s]+?)/?`", text))
    assert named, "the README names no files"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"README names files that do not exist: {missing}"
