"""Training checkpoints: atomic writes, verified reads, and the global RNG states a resume restores.

A checkpoint is a ``torch.save`` zip archive of plain tensors and Python values (loadable with
``weights_only=True``). It is written to a temporary file with a recognisable name
(``<name>.partial-<random>``) in the target's directory, fsynced, then renamed over the target, so a
crash or ``kill -9`` mid-write never damages the last good checkpoint. Temporaries orphaned by such a
kill are removed by :func:`remove_orphan_partials` (the engine calls it when a run starts or resumes).
"""
import glob
import os
import random
import tempfile
import zipfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..models.weights import non_finite_entries, non_tensor_entries

__all__ = ["CHECKPOINT_FORMAT", "PARTIAL_MARKER", "CheckpointError", "save_atomic", "load_checkpoint",
           "remove_orphan_partials", "rng_state", "rng_state_problem", "set_rng_state", "check_writable"]

CHECKPOINT_FORMAT = "fcos.engine/2"
PARTIAL_MARKER = ".partial-"  # temporary files are "<target file name>.partial-<random>"


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be used (truncated, corrupt, or not this engine's)."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary sibling, fsync, ``os.replace``).

    Raises:
        OSError: the directory cannot be written; the previous file at ``path`` is untouched and no
            temporary file is left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + PARTIAL_MARKER, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the checkpoint the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_orphan_partials(path: str) -> List[str]:
    """Delete temporaries of ``path`` left by a process killed while saving; returns the removed paths.

    Only files named ``<basename(path)>.partial-*`` in ``path``'s directory are touched. (Two runs writing
    the same checkpoint at once are not supported, so any such file is an orphan.)
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(directory), glob.escape(os.path.basename(path)) + PARTIAL_MARKER + "*")
    removed, freed = [], 0
    for leftover in glob.glob(pattern):
        try:
            size = os.path.getsize(leftover)
            os.remove(leftover)
        except FileNotFoundError:
            continue
        removed.append(leftover)
        freed += size
    if removed:
        print(f"Removed {len(removed)} unfinished checkpoint file(s) ({freed / 1e6:.1f} MB) left next to {path} "
              f"by an interrupted save.")
    return removed


def check_writable(path: str) -> None:
    """Fail now, not at the first save, when ``path`` cannot be written (a missing parent is created).

    Raises:
        OSError: naming ``path`` and the reason.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=os.path.basename(path) + PARTIAL_MARKER, dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Cannot write the checkpoint {path}: {e.strerror or e}. Choose another checkpoint_path "
                      f"(or --run-dir) in a writable directory.") from e
    if os.path.isdir(path):
        raise OSError(f"Cannot write the checkpoint {path}: it is a directory. Pass a file path as "
                      f"checkpoint_path (or --run-dir).")


def load_checkpoint(path: str, training_state: bool = True) -> Dict[str, Any]:
    """Load a training checkpoint on the CPU, after verifying every member's CRC-32.

    Args:
        path: the file.
        training_state: require everything a resume needs (settings, iteration, optimiser, history, RNG
            states). ``False``: only the weights are needed (predict, export; a checkpoint whose optimiser
            state was stripped to share it still loads).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a RuntimeError): the file is truncated, corrupt or not a checkpoint of this engine,
            lacks an entry the engine writes (e.g. the RNG states), or holds weights (or a weight average) with
            NaN or infinite values (the message names the file, which is left untouched).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found.")
    advice = "It was left untouched; delete it (or pass resume=False) to train from scratch."
    # torch.save writes a zip archive with a CRC-32 per member, but torch.load never checks them: a flipped
    # bit in a weight would be loaded silently. testzip() reads every member and verifies its CRC.
    try:
        with zipfile.ZipFile(path) as archive:
            damaged_member = archive.testzip()
    except Exception as e:  # BadZipFile (truncated, empty, not a checkpoint at all), OSError, ...
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt (not a complete zip archive: "
                           f"{type(e).__name__}: {e}). {advice}") from e
    if damaged_member is not None:
        raise CheckpointError(f"Checkpoint {path} is corrupt: the CRC-32 check of its member {damaged_member} failed "
                           f"(the file changed after it was written). {advice}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e}). {advice}") from e
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a training checkpoint of this version (format {CHECKPOINT_FORMAT}, "
                           f"found {found!r}). {advice}")
    problem = _content_problem(checkpoint, training_state)
    if problem:
        raise CheckpointError(f"Checkpoint {path} cannot be used: {problem}. {advice}")
    return checkpoint


# What every checkpoint of this format holds (``train_detector`` writes them all), and why it is needed.
_REQUIRED_ENTRIES = {"settings": "the training settings", "state": "the iteration reached", "model": "the weights",
                     "optimizer": "the optimiser state", "history": "the loss history",
                     "rng": "the random-number states a resume restores"}


def _content_problem(checkpoint: Dict[str, Any], training_state: bool = True) -> Optional[str]:
    """What makes a checkpoint of the right format unusable (a missing entry, weights that are not finite
    tensors: a file changed and saved again passes the CRC check), or None."""
    required = _REQUIRED_ENTRIES if training_state else {"model": _REQUIRED_ENTRIES["model"]}
    for key, what in required.items():
        if not isinstance(checkpoint.get(key), dict):
            return f"its {key!r} entry ({what}) is missing or not a dict"
    if training_state:
        iteration = checkpoint["state"].get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
            return f"its 'state' entry has no iteration count (got {iteration!r})"
        problem = rng_state_problem(checkpoint["rng"])
        if problem:
            return f"its 'rng' entry (the random-number states a resume restores) {problem}"
    for key in ("model", "ema"):
        weights = checkpoint.get(key)
        if weights is None:
            continue  # no weight average kept
        if not isinstance(weights, dict) or non_tensor_entries(weights):
            found = type(weights).__name__ if not isinstance(weights, dict) else "; ".join(non_tensor_entries(weights))
            return f"its {key!r} entry is not a state dict of tensors ({found})"
        non_finite = non_finite_entries(weights)
        if non_finite:
            return (f"its {'weights hold' if key == 'model' else 'weight average holds'} NaN or infinite values "
                    f"({'; '.join(non_finite)}), so every detection would be NaN")
    return None


def rng_state() -> Dict[str, Any]:
    """All global RNG states as tensors and plain Python values (loadable with ``weights_only=True``)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_problem(state: Any) -> Optional[str]:
    """What keeps ``state`` from being restored by :func:`set_rng_state` (``"has no 'numpy' state"``), or None."""
    if not isinstance(state, dict):
        return f"is a {type(state).__name__}, not a dict"
    parts = {"python": ("version", "state", "gauss"), "numpy": ("name", "keys", "pos", "has_gauss", "gauss")}
    for name, keys in parts.items():
        if not isinstance(state.get(name), dict) or any(k not in state[name] for k in keys):
            return f"has no complete {name!r} state (keys {', '.join(keys)})"
    tensors = {"python state": state["python"]["state"], "numpy keys": state["numpy"]["keys"],
               "torch": state.get("torch")}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            return f"has no {name} tensor (got {type(value).__name__})"
    if state["torch"].dtype != torch.uint8 or state["torch"].dim() != 1:
        return f"has a torch state of dtype {state['torch'].dtype} and shape {tuple(state['torch'].shape)}, not bytes"
    return None


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`.

    Raises:
        ValueError: ``state`` is not such a state (see :func:`rng_state_problem`).
    """
    problem = rng_state_problem(state)
    if problem:
        raise ValueError(f"set_rng_state: the state {problem}; pass what rng_state() returned")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
