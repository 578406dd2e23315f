"""Run the code cells of a notebook in order, in one namespace, without Jupyter (no nbformat / nbclient needed).

For machines that have torch but not the notebook tools (the lent GPU machine): the cells of
``one_stage_detector.ipynb`` are read as JSON and executed top to bottom in one ``__main__`` namespace, as a
kernel would, with

- the mode of the notebook's setup cell: ``--mode full`` (``FCOS_SMOKE=0``, the course's run) or ``smoke``;
- ``--set NAME=VALUE``: after each cell that assigns ``NAME`` at its top level, ``NAME`` takes ``VALUE`` (a Python
  literal; anything else is a string), e.g. ``--set TRAIN_ITERS=600`` for a full run with a short budget; a name
  that no cell assigns is refused before anything runs;
- ``--sub 'OLD=>NEW'``: text replaced in the cells' source before they run (e.g. ``'download=True=>download=False'``
  where the data are already unpacked and nothing can be downloaded); a text found in no cell is refused;
- IPython magics (``%pip``, ``%load_ext``, ``!cmd``) replaced by ``pass`` (and listed);
- ``plt.show()`` writing each open figure to ``--figures DIR/cell<k>-<n>.png`` (or just closing it).

Each cell's wall time is printed; the first failing cell stops the run with its number, its first line and the
traceback (exit status 1).

    python benchmarks/run_notebook.py --mode full --data-dir /tmp/voc07-224 --output-dir /tmp/nb \
        --set TRAIN_ITERS=600 --set PRETRAINED=False --sub 'download=True=>download=False' --figures /tmp/nb/figures
"""
import argparse
import ast
import json
import os
import re
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAGIC = re.compile(r"^(\s*)([%!].*)$")


class NotebookError(Exception):
    """A cell failed, or the overrides do not fit the notebook."""


def read_code_cells(path: str) -> List[str]:
    """The source of every code cell of the ``.ipynb`` file at ``path``, in order."""
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in notebook["cells"] if c.get("cell_type") == "code"]


def strip_magics(source: str) -> Tuple[str, List[str]]:
    """``source`` with each IPython magic line replaced by ``pass`` at its indentation, and the magics removed."""
    lines, magics = [], []
    for line in source.split("\n"):
        match = _MAGIC.match(line)
        if match:
            magics.append(match.group(2).strip())
            line = f"{match.group(1)}pass  # magic skipped"
        lines.append(line)
    return "\n".join(lines), magics


def assigned_names(source: str) -> set:
    """Names a cell binds at its top level (``X = ...``, ``A, B = ...``, ``X += ...``, ``X: int = ...``)."""
    names = set()
    for node in ast.parse(source).body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def parse_value(text: str) -> Any:
    """A Python literal (``600``, ``False``, ``None``, ``[64, 64]``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def prepare_cells(cells: Sequence[str], overrides: Dict[str, Any], subs: Sequence[Tuple[str, str]]):
    """Apply ``subs`` and strip magics; check every override and substitution finds its place.

    Returns ``[(source, magics, names to override after the cell)]``.
    """
    for old, _ in subs:
        if not any(old in cell for cell in cells):
            raise NotebookError(f"--sub: {old!r} appears in no code cell")
    prepared, unassigned = [], set(overrides)
    for cell in cells:
        for old, new in subs:
            cell = cell.replace(old, new)
        source, magics = strip_magics(cell)
        names = assigned_names(source) & set(overrides)
        unassigned -= names
        prepared.append((source, magics, sorted(names)))
    if unassigned:
        raise NotebookError(f"--set: no code cell assigns {sorted(unassigned)} (a typo?)")
    return prepared


def _figure_saver(figures_dir: Optional[str], cell_index: List[int]):
    """A ``plt.show`` replacement: save (if asked) and close every open figure."""
    import matplotlib.pyplot as plt

    def show(*args, **kwargs):
        for number in plt.get_fignums():
            if figures_dir:
                os.makedirs(figures_dir, exist_ok=True)
                plt.figure(number).savefig(os.path.join(figures_dir, f"cell{cell_index[0]:02d}-{number}.png"), dpi=80)
            plt.close(number)
    return show


def run_notebook(path: str, overrides: Optional[Dict[str, Any]] = None, subs: Sequence[Tuple[str, str]] = (),
                 figures_dir: Optional[str] = None) -> Dict[str, Any]:
    """Execute the code cells of ``path`` in order in one namespace; returns the namespace.

    Raises:
        NotebookError: an override or substitution that fits no cell (before running), or a failing cell
            (its number, first line and traceback; the original exception is chained).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overrides = dict(overrides or {})
    prepared = prepare_cells(read_code_cells(path), overrides, subs)
    current = [0]
    plt.show = _figure_saver(figures_dir, current)
    namespace: Dict[str, Any] = {"__name__": "__main__"}
    total = time.time()
    for index, (source, magics, names) in enumerate(prepared, start=1):
        current[0] = index
        if magics:
            print(f"[cell {index}] skipped magics: {magics}")
        start = time.time()
        try:
            exec(compile(source, f"<cell {index}>", "exec"), namespace)
        except BaseException as error:
            first = next((line for line in source.split("\n") if line.strip()), "")
            raise NotebookError(f"cell {index} of {len(prepared)} ({first.strip()[:80]!r}) failed after "
                                f"{time.time() - start:.1f} s:\n{traceback.format_exc()}") from error
        plt.show()
        for name in names:
            namespace[name] = overrides[name]
        note = f"; set {', '.join(f'{n}={overrides[n]!r}' for n in names)}" if names else ""
        print(f"[cell {index}/{len(prepared)}] {time.time() - start:.1f} s{note}", flush=True)
    print(f"run_notebook: {len(prepared)} code cells of {os.path.basename(path)} in {time.time() - total:.0f} s")
    return namespace


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", default=os.path.join(REPO, "one_stage_detector.ipynb"))
    parser.add_argument("--mode", choices=["full", "smoke"], default="full")
    parser.add_argument("--data-dir", default=None, help="FCOS_DATA_DIR (where the notebook finds its data)")
    parser.add_argument("--output-dir", default=None, help="FCOS_OUTPUT_DIR (weights, checkpoint, mAP files)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--sub", action="append", default=[], metavar="OLD=>NEW")
    parser.add_argument("--figures", default=None, help="folder for the figures plt.show() would display")
    args = parser.parse_args(argv)
    overrides, subs = {}, []
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        overrides[name] = parse_value(value)
    for item in args.sub:
        old, sep, new = item.partition("=>")
        if not sep or not old:
            parser.error(f"--sub {item!r}: expected OLD=>NEW")
        subs.append((old, new))
    os.environ["FCOS_SMOKE"] = "1" if args.mode == "smoke" else "0"
    for variable, value in (("FCOS_DATA_DIR", args.data_dir), ("FCOS_OUTPUT_DIR", args.output_dir)):
        if value:
            os.environ[variable] = os.path.abspath(value)
    notebook, figures = os.path.abspath(args.notebook), args.figures and os.path.abspath(args.figures)
    os.chdir(os.path.dirname(notebook))  # the notebook finds the modules in its own folder, as Jupyter starts it
    sys.path.insert(0, os.path.dirname(notebook))
    try:
        run_notebook(notebook, overrides, subs, figures)
    except NotebookError as error:
        print(f"run_notebook: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
