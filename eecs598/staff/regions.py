"""Solution regions of a source text or notebook: finding them, replacing them by stubs, putting them back.

Markers (whole lines, at the indentation of the region's code)::

    ### BEGIN SOLUTION
    <the solution>
    ### RELEASE            (optional: what the student gets instead of the stub, commented out)
    # <released code>
    ### END SOLUTION

The whole release (which files ship, the student README) is :mod:`eecs598.staff.release`.
"""
from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from eecs598.tools import stubs

__all__ = ["BEGIN_MARKER", "END_MARKER", "RELEASE_MARKER", "ReleaseError", "Region", "find_regions",
           "release_source", "reinsert_solutions", "release_notebook", "reinsert_notebook"]

BEGIN_MARKER = "### BEGIN SOLUTION"
END_MARKER = "### END SOLUTION"
RELEASE_MARKER = "### RELEASE"

# The course's banner around every stub: its text is defined once, in eecs598.tools.stubs, which the
# students' submission check (eecs598.tools.submit) reads to find stubs left in.
_MARKER_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>### (?:BEGIN SOLUTION|END SOLUTION|RELEASE))[ \t]*$")


class ReleaseError(ValueError):
    """A marker or release problem; the message names the file and line."""


@dataclass
class Region:
    """One marked region of a source text (line numbers are 0-based indices into ``text.split("\\n")``).

    Attributes:
        begin, end: indices of the ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines.
        indent: the markers' indentation.
        release_lines: for a region with a ``### RELEASE`` part, the uncommented release code (lines
            without newline); ``None`` for a student region.
        qualname: innermost enclosing function, e.g. ``"FCOS.forward"``; ``None`` outside functions.
        part, parts: this region's number among the student regions of ``qualname`` (1-based), and
            their count.
    """

    begin: int
    end: int
    indent: str
    release_lines: Optional[List[str]]
    qualname: Optional[str]
    part: int = 1
    parts: int = 1

    @property
    def is_student_work(self) -> bool:
        return self.release_lines is None

    @property
    def stub(self) -> str:
        """``"raise"`` (functions), ``"pass"`` (``__init__`` and outside functions) or ``"given"``."""
        if not self.is_student_work:
            return "given"
        if self.qualname is None or self.qualname.rsplit(".", 1)[-1] == "__init__":
            return "pass"
        return "raise"


# ------------------------------------------------------------------------------------------------
# Regions of one source text
# ------------------------------------------------------------------------------------------------


_MAGIC_LINE = re.compile(r"^(?P<indent>[ \t]*)[%!]")


def _parse(text: str) -> Optional[ast.Module]:
    """``ast.parse(text)``, with IPython ``%magic`` and ``!shell`` lines of notebook cells read as
    ``pass`` (same line numbers); ``None`` if it still is not Python."""
    lines = [_MAGIC_LINE.sub(lambda m: m.group("indent") + "pass  # ", line) for line in text.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _function_spans(text: str) -> Optional[List[Tuple[int, int, str]]]:
    """``(first_line, last_line, qualname)`` (1-based, inclusive) of every function in ``text``, or
    ``None`` if it is not Python."""
    tree = _parse(text)
    if tree is None:
        return None
    spans = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                spans.append((child.lineno, child.end_lineno, qualname))
                visit(child, qualname + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return spans


def _uncomment(line: str, indent: str, where: str) -> str:
    """``indent + "# code"`` -> ``indent + "code"``; ``indent + "#"`` -> ``""`` (a blank line)."""
    if line.strip() == "#" and line.startswith(indent):
        return ""
    if not line.startswith(indent + "# "):
        raise ReleaseError(
            f"{where}: every line after {RELEASE_MARKER} must be release code commented out as "
            f"'{indent}# <code>' (at the region's indentation), got {line!r}"
        )
    return indent + line[len(indent) + 2:]


def find_regions(text: str, where: str = "<text>") -> List[Region]:
    """Parse the solution regions of a Python source (or notebook cell) text.

    Args:
        text: the source.
        where: file name (and cell) for error messages.

    Returns:
        The regions in file order.

    Raises:
        ReleaseError: a malformed, unmatched, nested or mis-indented marker, or a line that mentions a
            marker without being exactly one (e.g. ``# ### BEGIN SOLUTION``).
    """
    lines = text.split("\n")
    spans = _function_spans(text)
    regions: List[Region] = []
    open_begin: Optional[int] = None
    open_indent = ""
    release_at: Optional[int] = None
    for index, line in enumerate(lines):
        match = _MARKER_LINE.match(line)
        if match is None:
            if any(word in line for word in ("BEGIN SOLUTION", "END SOLUTION")):
                raise ReleaseError(
                    f"{where}:{index + 1}: malformed marker {line.strip()!r}; markers are whole lines "
                    f"'{BEGIN_MARKER}' / '{END_MARKER}' (optionally '{RELEASE_MARKER}')"
                )
            if open_begin is not None and line.strip() and not line.startswith(open_indent):
                raise ReleaseError(
                    f"{where}:{index + 1}: line is indented less than the {BEGIN_MARKER} marker of line "
                    f"{open_begin + 1}; put the markers at the indentation of the region's code"
                )
            continue
        indent, marker = match.group("indent"), match.group("marker")
        if marker == BEGIN_MARKER:
            if open_begin is not None:
                raise ReleaseError(
                    f"{where}:{index + 1}: {BEGIN_MARKER} inside the region opened at line {open_begin + 1} "
                    f"(regions cannot nest; close it with {END_MARKER})"
                )
            open_begin, open_indent, release_at = index, indent, None
            continue
        if open_begin is None:
            raise ReleaseError(f"{where}:{index + 1}: {marker} without an open {BEGIN_MARKER}")
        if indent != open_indent:
            raise ReleaseError(
                f"{where}:{index + 1}: {marker} is indented differently from the {BEGIN_MARKER} of line "
                f"{open_begin + 1}"
            )
        if marker == RELEASE_MARKER:
            if release_at is not None:
                raise ReleaseError(f"{where}:{index + 1}: second {RELEASE_MARKER} in the region of line {open_begin + 1}")
            release_at = index
            continue
        # END_MARKER
        regions.append(_closed_region(lines, spans, open_begin, release_at, index, open_indent, where))
        open_begin, release_at = None, None
    if open_begin is not None:
        raise ReleaseError(f"{where}:{open_begin + 1}: {BEGIN_MARKER} without a matching {END_MARKER}")
    _number_parts(regions)
    return regions


def _closed_region(lines: List[str], spans, begin: int, release_at: Optional[int], end: int, indent: str,
                   where: str) -> Region:
    """The region between the markers at lines ``begin`` and ``end`` (0-based), checked."""
    solution_end = release_at if release_at is not None else end
    if not any(line.strip() for line in lines[begin + 1:solution_end]):
        raise ReleaseError(f"{where}:{begin + 1}: empty solution region")
    release_lines = None
    if release_at is not None:
        release_lines = [_uncomment(line, indent, f"{where}:{release_at + 2 + offset}")
                         for offset, line in enumerate(lines[release_at + 1:end])]
        if not any(line.strip() for line in release_lines):
            raise ReleaseError(f"{where}:{release_at + 1}: {RELEASE_MARKER} part without code")
    qualname = None
    if spans is not None:
        enclosing = [span for span in spans if span[0] < begin + 1 <= span[1]]
        if enclosing:
            qualname = max(enclosing, key=lambda span: span[0])[2]
    return Region(begin, end, indent, release_lines, qualname)


def _number_parts(regions: List[Region]) -> None:
    """Number the student regions of each function (FCOS.forward has two)."""
    by_function: Dict[str, List[Region]] = {}
    for region in regions:
        if region.is_student_work and region.qualname is not None:
            by_function.setdefault(region.qualname, []).append(region)
    for function_regions in by_function.values():
        for number, region in enumerate(function_regions, start=1):
            region.part, region.parts = number, len(function_regions)


def _replacement_lines(region: Region, file_name: str) -> List[str]:
    """The release's lines for ``region``: the banner and stub (:mod:`eecs598.tools.stubs`), or the given
    release code."""
    if not region.is_student_work:
        return list(region.release_lines)
    todo = stubs.todo_line(region.qualname, region.part, region.parts)
    if region.stub == "raise":
        replace = stubs.REPLACE_RAISE
        statement = stubs.raise_statement(region.qualname, file_name, region.part, region.parts)
    else:
        replace, statement = stubs.REPLACE_PASS, "pass"
    return stubs.banner(region.indent, todo, replace, statement)


def release_source(text: str, where: str = "<text>") -> str:
    """The release version of a solution source text: each region replaced (see the module docstring).

    Args:
        text: solution source (a ``.py`` file or a notebook cell).
        where: its file name, used in messages and in the stubs' ``NotImplementedError`` text.

    Raises:
        ReleaseError: bad markers, or a ``.py`` release that is no longer valid Python.
    """
    lines = text.split("\n")
    regions = find_regions(text, where)
    if not regions:
        return text
    file_name = os.path.basename(where.split(" ")[0])
    out: List[str] = []
    position = 0
    for region in regions:
        out += lines[position:region.begin]
        out += _replacement_lines(region, file_name)
        position = region.end + 1
    out += lines[position:]
    released = "\n".join(out)
    if _parse(text) is not None and _parse(released) is None:  # Python in, Python out
        raise ReleaseError(f"{where}: the release is not valid Python; check the markers' indentation")
    return released


def reinsert_solutions(release_text: str, solution_text: str, where: str = "<text>") -> str:
    """Put the solution's regions back into a release text.

    Each region's release replacement (stub banner or given code) is searched in ``release_text`` in
    order and replaced by the region itself, markers included; everything between them is taken from
    the release. So the result equals ``solution_text`` exactly if and only if the release changed
    nothing outside the regions.

    Raises:
        ReleaseError: a region's replacement is not found in the release.
    """
    release_lines = release_text.split("\n")
    solution_lines = solution_text.split("\n")
    file_name = os.path.basename(where.split(" ")[0])
    out: List[str] = []
    position = 0
    for region in find_regions(solution_text, where):
        replacement = _replacement_lines(region, file_name)
        found = next(
            (start for start in range(position, len(release_lines) - len(replacement) + 1)
             if release_lines[start:start + len(replacement)] == replacement),
            None,
        )
        if found is None:
            raise ReleaseError(
                f"{where}: the release has no stub for the region at solution line {region.begin + 1} "
                f"({region.qualname or 'module level'}) after release line {position + 1}"
            )
        out += release_lines[position:found]
        out += solution_lines[region.begin:region.end + 1]
        position = found + len(replacement)
    out += release_lines[position:]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Notebooks
# ------------------------------------------------------------------------------------------------


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _source_list(text: str) -> List[str]:
    """nbformat's on-disk form: a list of lines, each with its newline except the last."""
    return text.splitlines(keepends=True)


def _dump_notebook(notebook: dict) -> str:
    # The same bytes as nbformat.write (indent 1, non-ASCII kept, final newline).
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def release_notebook(text: str, where: str = "notebook.ipynb") -> str:
    """The release version of a notebook (JSON text): regions of code cells replaced, every output,
    execution count and execution-timing metadata cleared.

    Raises:
        ReleaseError: bad markers, or a marker in a markdown cell (regions live in code cells only).
    """
    notebook = json.loads(text)
    for index, cell in enumerate(notebook.get("cells", [])):
        source = _cell_source(cell)
        cell_where = f"{where} cell {index}"
        if cell.get("cell_type") != "code":
            if "BEGIN SOLUTION" in source or "END SOLUTION" in source:
                raise ReleaseError(f"{cell_where}: solution markers are only allowed in code cells")
            continue
        released = release_source(source, cell_where)
        if released != source:
            cell["source"] = _source_list(released)
        cell["outputs"] = []
        cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    return _dump_notebook(notebook)


def reinsert_notebook(release_text: str, solution_text: str, where: str = "notebook.ipynb") -> str:
    """:func:`reinsert_solutions` for every code cell of a released notebook (JSON texts). Outputs stay as
    in the release (cleared)."""
    released, solution = json.loads(release_text), json.loads(solution_text)
    if len(released.get("cells", [])) != len(solution.get("cells", [])):
        raise ReleaseError(f"{where}: the release has {len(released['cells'])} cells, the solution "
                           f"{len(solution['cells'])}")
    for index, (cell, solution_cell) in enumerate(zip(released["cells"], solution["cells"])):
        if cell.get("cell_type") != "code":
            continue
        source, solution_source = _cell_source(cell), _cell_source(solution_cell)
        restored = reinsert_solutions(source, solution_source, f"{where} cell {index}")
        if restored != source:
            cell["source"] = _source_list(restored)
    return _dump_notebook(released)
