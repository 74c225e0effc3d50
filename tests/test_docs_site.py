"""The documentation site's structure, checked without mkdocs: the API reference covers every public
name, its directives resolve, the navigation lists every page, and the docstring converter works."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

import mtlopt

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
_DIRECTIVE = re.compile(r"^::: (?P<target>[\w.]+)\n(?P<options>(?:[ \t]+.*\n?)*)", re.M)


def directives() -> list[tuple[str, list[str]]]:
    """(target, members) of every ``::: target`` directive of the API reference pages."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text()):
            listed = re.search(r"members:\s*\[([^\]]*)\]", match.group("options"))
            members = [m.strip() for m in listed.group(1).split(",")] if listed else []
            found.append((match.group("target"), members))
    return found


def documented_names() -> set[str]:
    names = set()
    for target, members in directives():
        if target.startswith("mtlopt.") and target.count(".") == 1:
            names.add(target.split(".", 1)[1])  # ::: mtlopt.X
        names.update(members)
    return names


def test_every_public_name_is_in_the_api_reference() -> None:
    missing = sorted(set(mtlopt.__all__) - documented_names())
    assert not missing, f"names of mtlopt.__all__ without an entry in docs/reference/: {missing}"


def test_every_name_of_the_public_subpackages_is_in_the_api_reference() -> None:
    import mtlopt.distributed
    import mtlopt.set_learners

    for module in (mtlopt.set_learners, mtlopt.distributed):
        missing = sorted(set(module.__all__) - documented_names())
        assert not missing, f"{module.__name__}: {missing}"


def _resolve(target: str) -> object:
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(target)


@pytest.mark.parametrize(("target", "members"), directives(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_directive_resolves(target: str, members: list[str]) -> None:
    obj = _resolve(target)
    for member in members:
        assert hasattr(obj, member), f"::: {target} lists member {member!r}, which it does not have"


def test_the_navigation_lists_every_page_and_only_existing_ones() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(
        re.findall(r"^\s*- (?:[^\n:]+: )?([\w./-]+\.md)\s*$", config[config.index("\nnav:") :], flags=re.M)
    )
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert nav - pages == set(), "the nav names pages that do not exist"
    assert pages - nav == set(), "pages missing from the nav (mkdocs --strict warns about them)"


def _converter():
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "tools" / "griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rst_to_markdown


def test_the_docstring_converter_rewrites_the_rest_subset() -> None:
    convert = _converter()
    text = (
        "See :class:`~mtlopt.MGDA` and :func:`mtlopt.backward`; ``x`` is :math:`\\|g\n_t\\|`.\n\n"
        ".. math::\n\n    a = b\n\n    c = d\n\n"
        "====  =====\nname  value\n====  =====\n``a``   1 |\n      more\nb     :math:`\\|x\\|`\n====  =====\n\n"
        ".. code-block:: python\n\n    print(1)\n\nArgs:\n    x: ``y``.\n"
    )
    assert convert(text).splitlines() == [
        "See `MGDA` and `mtlopt.backward`; `x` is \\(\\|g",
        "_t\\|\\).",
        "",
        "$$",
        "a = b",
        "$$",
        "",
        "$$",
        "c = d",
        "$$",
        "",
        "| name | value |",
        "|---|---|",
        "| `a` | 1 \\| more |",
        "| b | \\(\\|x\\|\\) |",
        "",
        "```python",
        "print(1)",
        "```",
        "",
        "Args:",
        "    x: `y`.",
    ]
