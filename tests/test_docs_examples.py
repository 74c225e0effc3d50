"""Every Python example of the documentation site and of the README runs alone, and examples/ runs.

Each ```python block of README.md and of docs/**/*.md is executed by itself in a fresh namespace (so
each is self-contained). A comment line directly above a block changes how it runs:

- ``<!-- example: slow -->``: marked slow (excluded from the default run);
- ``<!-- example: needs PACKAGE -->``: skipped when PACKAGE does not import.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:^<!-- example: (?P<marks>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """(code, markers) of each ```python block of a Markdown file."""
    return [
        (m.group("code"), [w.strip() for w in (m.group("marks") or "").split(",") if w.strip()])
        for m in _BLOCK.finditer(path.read_text())
    ]


def _cases() -> list:
    cases = []
    for path in DOCUMENTS:
        for i, (code, marks) in enumerate(python_blocks(path)):
            pytest_marks = [pytest.mark.slow] if "slow" in marks else []
            needs = [m.split(None, 1)[1] for m in marks if m.startswith("needs ")]
            name = f"{path.relative_to(ROOT)}#{i + 1}"
            cases.append(pytest.param(path, code, needs, id=name, marks=pytest_marks))
    return cases


@pytest.mark.parametrize(("path", "code", "needs"), _cases())
def test_python_block_runs_alone(path: Path, code: str, needs: list[str]) -> None:
    for package in needs:
        pytest.importorskip(package)
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(code, str(path), "exec"), namespace)


def test_markers_are_known() -> None:
    """A misspelt marker would silently run (or skip) a block: only the documented ones are allowed."""
    for path in DOCUMENTS:
        for marks in re.findall(r"^<!-- example: ([^>]*?) -->", path.read_text(), flags=re.M):
            for mark in marks.split(","):
                assert mark.strip() == "slow" or mark.strip().startswith("needs "), (path, mark)


def test_readme_has_a_runnable_example() -> None:
    assert python_blocks(ROOT / "README.md")


def test_digits_example_runs(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["digits_two_tasks.py", "--epochs", "1", "--seeds", "1"])
    runpy.run_path(str(ROOT / "examples" / "digits_two_tasks.py"), run_name="__main__")
    table = capsys.readouterr().out
    for method in ("ew", "mgda", "mgda-ub"):
        assert f"| {method} |" in table


def test_files_the_readme_names_exist() -> None:
    """Every committed result, benchmark script and example the README points to is in the repository,
    and every relative link of the README leads to a file."""
    text = re.sub(r"^```.*?^```", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)  # prose only
    named = set(re.findall(r"`((?:docs|tools|examples|scripts)/[^`\s]+?)/?`", text))
    assert named, "the README names no files"
    linked = {link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link}
    missing = sorted(path for path in named | linked if path and not (ROOT / path).exists())
    assert not missing, f"README names files that do not exist: {missing}"
