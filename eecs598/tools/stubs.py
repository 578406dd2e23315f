"""The release's stubs: the one definition of their text, and the scan that finds them in a student's file.

The course staff's release tool writes every unimplemented region with these formats; the student-side
submission check (``eecs598.tools.submit``) recognises them here, without the staff wing (which students
do not have). A region of the release reads::

    ######################################################################
    # TODO: Implement part 1 of 2 of FCOS.forward, as its docstring describes.
    ######################################################################
    # Replace the "raise NotImplementedError(...)" statement with your code
    raise NotImplementedError("FCOS.forward (part 1 of 2) is not implemented yet: write it in one_stage_detector.py")
    ######################################################################
    #                          END OF YOUR CODE                          #
    ######################################################################

(``# Replace "pass" statement with your code`` and ``pass`` inside ``__init__`` and outside functions.)
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

__all__ = ["RULE", "END_OF_YOUR_CODE", "REPLACE_PASS", "REPLACE_RAISE", "TODO_OPTIONAL", "todo_line",
           "raise_statement", "banner", "find_unimplemented"]

RULE = "#" * 70
END_OF_YOUR_CODE = "#" + "END OF YOUR CODE".center(68) + "#"
REPLACE_PASS = '# Replace "pass" statement with your code'
REPLACE_RAISE = '# Replace the "raise NotImplementedError(...)" statement with your code'
TODO_OPTIONAL = "# TODO (optional): helper functions or code of your own go here."

_TODO = re.compile(r"^\s*# TODO: Implement (?:part \d+ of \d+ of )?(?P<name>[\w.]+), as its docstring describes\.\s*$")
_RAISE_STUB = re.compile(r'raise NotImplementedError\("(?P<name>[^"]*?)(?: \(part \d+ of \d+\))? is not implemented yet')
# What a region still holds when nothing was written in it: the stub statement, or nothing but `pass` / `...`.
_EMPTY_STATEMENTS = {"pass", "...", "pass;"}


def todo_line(qualname: Optional[str], part: int = 1, parts: int = 1) -> str:
    """The banner's TODO comment (without indentation); ``qualname=None`` for a block outside functions."""
    if qualname is None:
        return TODO_OPTIONAL
    prefix = f"part {part} of {parts} of " if parts > 1 else ""
    return f"# TODO: Implement {prefix}{qualname}, as its docstring describes."


def raise_statement(qualname: str, file_name: str, part: int = 1, parts: int = 1) -> str:
    """The stub statement of a function region: a ``NotImplementedError`` naming the function and file."""
    label = f" (part {part} of {parts})" if parts > 1 else ""
    return f'raise NotImplementedError("{qualname}{label} is not implemented yet: write it in {file_name}")'


def banner(indent: str, todo: str, replace: str, statement: str) -> List[str]:
    """The release's lines for one student region, at ``indent``."""
    body = [RULE, todo, RULE, replace, statement, RULE, END_OF_YOUR_CODE, RULE]
    return [indent + line for line in body]


def _region_code(lines: List[str], start: int) -> Tuple[List[str], int]:
    """``(code lines, end)``: the code (comments, blanks and the banner's rules left out) from ``start`` up
    to the region's ``END OF YOUR CODE`` line (or the next TODO banner, or the end of the text), and the
    index where it stops."""
    code = []
    end = start
    for end in range(start, len(lines)):
        stripped = lines[end].strip()
        if stripped == END_OF_YOUR_CODE.strip() or _TODO.match(lines[end]):
            break
        if stripped and not stripped.startswith("#"):
            code.append(stripped)
    return code, end


def find_unimplemented(text: str, file: str) -> List[str]:
    """``"file:line: name"`` for every region of the release still unimplemented in ``text``.

    A region counts as unimplemented when its banner's code is still the stub (``raise
    NotImplementedError(...)`` of the release, or ``pass``), was replaced by only ``pass`` or ``...``, or is
    empty; a release stub statement left anywhere else counts too. The optional helper blocks (``TODO
    (optional)``) are never required.
    """
    lines = text.split("\n")
    found = []
    in_banner = set()
    for index, line in enumerate(lines):
        todo = _TODO.match(line)
        if todo is None:
            continue
        code, end = _region_code(lines, index + 1)
        if all(statement in _EMPTY_STATEMENTS or _RAISE_STUB.search(statement) for statement in code):
            found.append((index + 1, todo.group("name")))
        in_banner.update(range(index + 1, end + 1))
    for index, line in enumerate(lines):
        match = _RAISE_STUB.search(line)
        if match and index not in in_banner and not line.strip().startswith("#"):
            found.append((index + 1, match.group("name")))
    return [f"{file}:{number}: {name}" for number, name in sorted(found)]
