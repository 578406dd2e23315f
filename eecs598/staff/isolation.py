"""Which reference code the sandbox gets for one graded function: the other functions its checks run through,
one definition at a time, and never anything of the function being graded.

A bug must cost the points of its own function only, so when ``FCOS.forward`` is graded the backbone, head,
locations, deltas, centerness and inference inside it are the reference solution's. The sandbox gets them
as **source text of just those definitions** (plus the module-level helpers they use), compiled there in a
namespace of their own whose names for the graded function (and every graded function it does not get)
are the student's: so the injected code cannot lead back to the reference of the function being graded.
The functions the course gives (``class_spec_nms``, matching) come from the release's text: the release's
``class_spec_nms`` calls ``nms`` instead of the solution's NMS internals.

Found from the source (``ast``): the graded and given names a definition refers to, and the helpers; which
other functions a function's checks need beyond its own reference's calls is :data:`checks.NEEDS`.
:class:`IsolationError` (a configuration error, before grading) when a helper written in a solution region
would be shared by the graded function and an injected one.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .checks import GIVEN_FUNCTIONS, NEEDS
from .regions import find_regions, release_source

__all__ = ["IsolationError", "Definitions", "parse_sources", "injection_for"]

MODULE_FILES = ("common.py", "one_stage_detector.py")


class IsolationError(ValueError):
    """The isolation of a function cannot be built without showing part of its reference."""


@dataclass
class Definitions:
    """The top-level definitions of one module's source text."""

    file: str
    text: str
    nodes: Dict[str, ast.AST] = field(default_factory=dict)  # name -> def / class / assignment
    imports: List[str] = field(default_factory=list)  # source of each top-level import
    from_common: Set[str] = field(default_factory=set)  # names imported `from common import ...`
    solution_only: Set[str] = field(default_factory=set)  # helpers written inside a solution region

    @classmethod
    def parse(cls, file: str, text: str) -> "Definitions":
        tree = ast.parse(text)
        spans = [(r.begin + 1, r.end + 1) for r in find_regions(text, file)
                 if r.is_student_work and r.qualname is None]
        result = cls(file, text)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                result.imports.append(ast.get_source_segment(text, node))
                if isinstance(node, ast.ImportFrom) and node.module == "common":
                    result.from_common.update(alias.asname or alias.name for alias in node.names)
                continue
            for name in _defined_names(node):
                result.nodes[name] = node
                if any(begin < node.lineno <= end for begin, end in spans):
                    result.solution_only.add(name)
        return result

    def source(self, dotted: str) -> str:
        """The source of a top-level definition, or of ``Class.method`` (dedented), decorators included."""
        parts = dotted.split(".")
        node = self.nodes[parts[0]]
        if len(parts) == 2:
            node = next(item for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and item.name == parts[1])
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        lines = self.text.split("\n")[first - 1:node.end_lineno]
        return textwrap.dedent("\n".join(lines)) + "\n"

    def node(self, dotted: str) -> ast.AST:
        return ast.parse(self.source(dotted))


def _defined_names(node: ast.AST) -> List[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [target.id for target in targets if isinstance(target, ast.Name)]


def _referenced(tree: ast.AST) -> Set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


class _Plan:
    """The closure of definitions to inject for graded function ``function`` (see :func:`injection_for`)."""

    def __init__(self, function: str, graded: Dict[str, str], solution: Dict[str, Definitions],
                 release: Dict[str, Definitions]):
        self.function = function
        self.graded = graded  # dotted name -> file
        self.given = {name: file for file, name in GIVEN_FUNCTIONS}
        self.solution, self.release = solution, release
        self.targets: List[Tuple[str, str]] = []  # (file, dotted) in the order found
        self.helpers: Dict[str, Set[str]] = {file: set() for file in MODULE_FILES}
        self.student_names: Dict[str, Set[str]] = {file: set() for file in MODULE_FILES}

    def own_top_name(self) -> str:
        return self.function.split(".")[0]

    def definitions(self, file: str, dotted: str) -> Definitions:
        return self.release[file] if dotted in self.given else self.solution[file]

    def add_target(self, dotted: str) -> None:
        file = self.graded.get(dotted) or self.given.get(dotted)
        if (file, dotted) in self.targets or dotted == self.function:
            return
        self.targets.append((file, dotted))
        self.follow(file, self.definitions(file, dotted).node(dotted))

    def follow(self, file: str, tree: ast.AST) -> None:
        """Add what ``tree`` (code of ``file``) refers to: graded and given names as targets (the graded
        function itself as the student's), module helpers of ``file``."""
        definitions = self.solution[file]
        for name in sorted(_referenced(tree)):
            owner = "common.py" if name in definitions.from_common else file
            if name in self.graded or name in self.given:
                if name == self.own_top_name() or name == self.function:
                    self.student_names[owner].add(name)
                else:
                    self.add_target(name)
            elif owner == file and name in definitions.nodes and name not in self.helpers[file]:
                self.helpers[file].add(name)
                self.follow(file, ast.parse(definitions.source(name)))

    def start(self) -> None:
        """The graded and given names the graded function's own reference calls: what the student's version
        calls too, and must get as the reference's."""
        file = self.graded[self.function]
        for name in sorted(_referenced(self.solution[file].node(self.function))):
            if (name in self.graded or name in self.given) and name not in (self.own_top_name(), self.function):
                self.add_target(name)

    def own_helpers(self) -> Set[Tuple[str, str]]:
        """Solution-only helpers that the graded function's own reference uses (transitively)."""
        file = self.graded[self.function]
        definitions = self.solution[file]
        found: Set[Tuple[str, str]] = set()
        pending = list(_referenced(definitions.node(self.function)))
        while pending:
            name = pending.pop()
            if name in definitions.nodes and name not in self.graded and name not in self.given \
                    and (file, name) not in found:
                found.add((file, name))
                pending += _referenced(ast.parse(definitions.source(name)))
        return {(f, n) for f, n in found if n in definitions.solution_only}


def parse_sources(solution_texts: Dict[str, str]) -> Tuple[Dict[str, Definitions], Dict[str, Definitions]]:
    """``(solution definitions, release definitions)`` by file: parse once, inject many functions."""
    solution = {file: Definitions.parse(file, text) for file, text in solution_texts.items()}
    release = {file: Definitions.parse(file, release_source(text, file)) for file, text in solution_texts.items()}
    return solution, release


def injection_for(function: str, graded: Dict[str, str], solution_texts: Dict[str, str],
                  parsed: Optional[Tuple[Dict[str, Definitions], Dict[str, Definitions]]] = None) -> dict:
    """The injection spec of ``function`` (plain data for the sandbox's runner).

    Args:
        function: the graded function (``points.json`` name).
        graded: every graded function's name -> its file.
        solution_texts: ``{"common.py": text, "one_stage_detector.py": text}`` of the reference solution.
        parsed: :func:`parse_sources` of those texts, when several functions are injected.

    Returns:
        ``{"files": [{"file", "imports", "source", "exports", "methods", "student_names"}, ...]}``, empty
        ``files`` when the function's checks run through no other function; in ``common.py``,
        ``one_stage_detector.py`` order.

    Raises:
        IsolationError: a solution-only helper would be injected that the function's own reference uses.
    """
    solution, release = parsed or parse_sources(solution_texts)
    plan = _Plan(function, graded, solution, release)
    plan.start()
    for needed in NEEDS.get(function, ()):
        plan.add_target(needed)
    leaked = plan.own_helpers() & {(file, name) for file, names in plan.helpers.items() for name in names}
    if leaked:
        raise IsolationError(f"isolating {function} would inject the solution helpers {sorted(leaked)} that its own "
                             "reference uses; move them out of the solution region or into the function")
    files = []
    for file in MODULE_FILES:
        top = [dotted for f, dotted in plan.targets if f == file and "." not in dotted]
        methods = [dotted for f, dotted in plan.targets if f == file and "." in dotted]
        helpers = sorted(plan.helpers[file], key=lambda name: solution[file].nodes[name].lineno)
        if not (top or methods):
            continue
        source = "\n\n".join([solution[file].source(name) for name in helpers] +
                             [plan.definitions(file, name).source(name) for name in top])
        files.append({
            "file": file,
            "imports": "\n".join(solution[file].imports) + "\n",
            "source": source,
            "exports": top,
            "methods": [[dotted, plan.definitions(file, dotted).source(dotted)] for dotted in methods],
            "student_names": sorted(plan.student_names[file]),
        })
    return {"files": files}
