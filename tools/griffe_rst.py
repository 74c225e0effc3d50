"""The reST subset of mtlopt's docstrings, rewritten as Markdown for the documentation site.

mtlopt's docstrings use Google-style sections (``Args:``, ``Returns:``, ``Attributes:``), which
mkdocstrings parses, inside reST markup: ``code``, :math:`x`, :class:`~mtlopt.X` roles,
``.. math::`` and ``.. code-block::`` directives and simple tables (``====`` borders). mkdocstrings
renders docstrings as Markdown, so :func:`rst_to_markdown` rewrites that subset before griffe parses
the sections; :class:`RstToMarkdown` is the griffe extension that applies it to every docstring
(``mkdocs.yml``: ``extensions: [tools/griffe_rst.py:RstToMarkdown]``).

:func:`rst_to_markdown` is plain Python (tests/test_docs_site.py checks it without griffe or mkdocs).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

_BORDER = re.compile(r"^(\s*)(=+)(\s+=+)+\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\. (math|code-block)::\s*(\S*)\s*$")
_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _directive(lines: list[str], i: int, out: list[str]) -> int:
    """Rewrite the directive at lines[i] into out; return the index after its body."""
    match = _DIRECTIVE.match(lines[i])
    assert match is not None
    pad, kind, arg = match.group(1), match.group(2), match.group(3)
    j = i + 1
    body: list[str] = []
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > len(pad)):
        body.append(lines[j])
        j += 1
    while body and not body[-1].strip():  # trailing blank lines belong to the text after the block
        body.pop()
        j -= 1
    content = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
    if kind == "math":  # one display block per paragraph of the directive (a blank line ends one)
        paragraphs = "\n".join(content).split("\n\n")
        for n, paragraph in enumerate(p for p in paragraphs if p.strip()):
            if n:
                out.append("")
            out.extend([f"{pad}$$", *(f"{pad}{c}" for c in paragraph.strip("\n").splitlines()), f"{pad}$$"])
    else:
        out.extend([f"{pad}```{arg or 'text'}", *(f"{pad}{c}" if c else "" for c in content), f"{pad}```"])
    return j


def _table(lines: list[str], i: int, out: list[str]) -> int:
    """Rewrite the simple table whose top border is lines[i]; return the index after it."""
    border = lines[i]
    pad = _BORDER.match(border).group(1)  # type: ignore[union-attr]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    rows: list[list[str]] = []
    header: list[list[str]] | None = None
    borders = 1
    j = i + 1
    while j < len(lines) and borders < 3:
        line = lines[j]
        if _BORDER.match(line):
            borders += 1
            if borders == 2:
                header, rows = rows, []
        elif line.strip():
            cells = []
            for k, (start, _) in enumerate(spans):
                stop = spans[k + 1][0] if k + 1 < len(spans) else len(line)
                cells.append(line[start:stop].strip())
            if rows and not cells[0]:  # a continuation line of the row above
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        j += 1
    if borders < 3:  # a border line without the rest of a table: leave the text as it is
        out.append(lines[i])
        return i + 1
    if not header:  # a table without a header row: the first body row serves as one
        header, rows = rows[:1], rows[1:]
    cell = lambda text: re.sub(r"(?<!\\)\|", r"\\|", text)  # noqa: E731  (a bare | would split the cell)
    head = [" ".join(column).strip() for column in zip(*header)]
    if out and out[-1].strip():
        out.append("")
    out.append(pad + "| " + " | ".join(cell(h) for h in head) + " |")
    out.append(pad + "|" + "|".join("---" for _ in head) + "|")
    out.extend(pad + "| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
    return j


def _inline(text: str) -> str:
    text = _MATH_ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    text = _ROLE.sub(
        lambda m: "`" + (m.group(3).rsplit(".", 1)[-1] if m.group(2) else m.group(3)) + "`", text
    )
    return _LITERAL.sub(lambda m: "`" + m.group(1) + "`", text)


def rst_to_markdown(text: str) -> str:
    """mtlopt's reST docstring markup as Markdown (Google-style sections left as they are)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _DIRECTIVE.match(lines[i]):
            i = _directive(lines, i, out)
            continue
        if _BORDER.match(lines[i]):
            i = _table(lines, i, out)
            continue
        out.append(lines[i])
        i += 1
    # Inline markup (a role may span lines), outside code and math blocks.
    result: list[str] = []
    prose: list[str] = []
    code = math = False
    for line in out:
        mark = line.strip()
        toggles = (mark.startswith("```") and not math, mark == "$$" and not code)
        if toggles[0] or toggles[1] or code or math:
            if prose:
                result.extend(_inline("\n".join(prose)).split("\n"))
                prose = []
            code ^= toggles[0]
            math ^= toggles[1]
            result.append(line)
        else:
            prose.append(line)
    if prose:
        result.extend(_inline("\n".join(prose)).split("\n"))
    return "\n".join(result)


try:
    import griffe
except ImportError:  # the converter alone (tests): no extension class
    griffe = None

if griffe is not None:

    class RstToMarkdown(griffe.Extension):
        """Rewrite each docstring's reST markup as Markdown when griffe loads it."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
