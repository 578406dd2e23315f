"""The package's plan, checked: wings import each other in one direction only, nothing in eecs598/ imports
train_fcos, and no module or function outgrows what a reader can hold (README, "Layout").

The rule (a wing may import the wings before it, never one after it):

    base (eecs598/__init__, errors, grad, utils, recipes)  <  data  <  models  <  evaluation  <  train
        <  [course modules: common, one_stage_detector, a4_helper]  <  tools  <  staff

The command shims at the top of eecs598/ (``python -m eecs598.mean_ap`` and the like) rank as the wing they
forward to.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "eecs598")

RANKS = {"base": 0, "data": 1, "models": 2, "evaluation": 3, "train": 4, "course": 5, "tools": 6, "staff": 7}
COURSE_MODULES = {"common", "one_stage_detector", "a4_helper"}
SHIMS = {"mean_ap": "evaluation", "coco_eval": "evaluation", "analysis": "evaluation", "model_report": "tools",
         "submit": "tools", "predict": "tools", "export": "tools", "app": "tools", "release": "staff",
         "grade": "staff"}
# The course's own files and the regions the course hands out are exempt from the size rules.
EXEMPT_MODULES = {"common.py", "one_stage_detector.py"}
EXEMPT_FUNCTIONS = {("one_stage_detector.py", "FCOS.forward")}
MAX_MODULE_LINES = 600
MAX_FUNCTION_CODE_LINES = 60


def package_modules():
    """``(dotted name, path)`` of every Python module of eecs598/ (the student test templates aside)."""
    for folder, subfolders, names in os.walk(PACKAGE):
        subfolders[:] = [d for d in subfolders if d not in ("__pycache__", "student_tests")]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted, path


def wing_of(dotted: str) -> str:
    """The wing of a module name (``eecs598.data.shapes`` -> ``data``; a course module -> ``course``)."""
    parts = dotted.split(".")
    if parts[0] in COURSE_MODULES:
        return "course"
    if parts[0] != "eecs598":
        return "external"
    if len(parts) == 1:
        return "base"
    if parts[1] in RANKS:
        return parts[1]
    return SHIMS.get(parts[1], "base")


def imported_modules(path: str, dotted: str):
    """Absolute names of the modules (and ``from`` targets) a file imports, relative imports resolved."""
    is_package = path.endswith("__init__.py")
    package = dotted.split(".") if is_package else dotted.split(".")[:-1]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def test_wings_import_each_other_in_one_direction_only():
    offences = []
    for dotted, path in package_modules():
        own = RANKS[wing_of(dotted)]
        for target in imported_modules(path, dotted):
            wing = wing_of(target)
            if wing == "external":
                continue
            if target.split(".")[0] == "train_fcos":
                offences.append(f"{dotted} imports train_fcos")
            elif RANKS[wing] > own:
                offences.append(f"{dotted} ({wing_of(dotted)}) imports {target} ({wing})")
    assert not offences, "imports against the wing order:\n" + "\n".join(sorted(set(offences)))


def test_nothing_in_the_package_imports_train_fcos():
    offenders = [dotted for dotted, path in package_modules()
                 if any(t.split(".")[0] == "train_fcos" for t in imported_modules(path, dotted))]
    assert offenders == []


def _code_lines(node: ast.AST, lines) -> int:
    """Lines of a function that hold code: its span minus blank lines, comments and its docstring."""
    body = node.body
    start = body[0].end_lineno + 1 if (body and isinstance(body[0], ast.Expr)
                                       and isinstance(getattr(body[0], "value", None), ast.Constant)
                                       and isinstance(body[0].value.value, str)) else node.body[0].lineno
    count = 1  # the def line(s)
    for text in lines[start - 1:node.end_lineno]:
        stripped = text.strip()
        if stripped and not stripped.startswith("#"):
            count += 1
    return count


def _python_files():
    files = [path for _, path in package_modules()]
    files += [os.path.join(REPO, name) for name in ("common.py", "one_stage_detector.py", "a4_helper.py",
                                                    "train_fcos.py")]
    return files


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_modules_and_functions_stay_small(path):
    relative = os.path.relpath(path, REPO)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    if relative not in EXEMPT_MODULES:
        assert len(lines) <= MAX_MODULE_LINES, f"{relative} has {len(lines)} lines (> {MAX_MODULE_LINES}): split it"
    tree = ast.parse(source)
    too_long = []

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                size = _code_lines(child, lines)
                if size > MAX_FUNCTION_CODE_LINES and (relative, name) not in EXEMPT_FUNCTIONS:
                    too_long.append(f"{name} ({size} code lines)")
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree)
    assert not too_long, f"{relative}: functions over {MAX_FUNCTION_CODE_LINES} code lines: {too_long}"


def test_the_layout_rule_checks_what_it_claims():
    """The checker itself: a made-up upward import and a relative import resolve to the right wings."""
    assert wing_of("eecs598.data.shapes") == "data" and wing_of("eecs598.staff.grade") == "staff"
    assert wing_of("eecs598.mean_ap") == "evaluation" and wing_of("one_stage_detector") == "course"
    assert wing_of("eecs598.recipes") == "base" and wing_of("torch") == "external"
    path = os.path.join(PACKAGE, "train", "api.py")
    assert "eecs598.data.sampling" in set(imported_modules(path, "eecs598.train.api"))
