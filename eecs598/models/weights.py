"""Checks of weight tensors read from files: a trunk's state dict, a checkpoint's model or weight average.

``torch.load`` verifies neither kind nor value: an ``int64`` tensor where a model holds ``float32`` is copied
by ``load_state_dict`` without a word (the model then runs with truncated weights), and a NaN weight makes
every output NaN, which an evaluation reports as 0% mAP and a training run as a non-finite loss at its
first step. The callers name the file and raise their own error type (``ValueError`` for a trunk file,
``CheckpointError`` for a checkpoint).
"""
from typing import Dict, List, Mapping

import torch

__all__ = ["non_finite_entries", "dtype_problems", "non_tensor_entries"]

_LIMIT = 4  # entries named in a message; the count says how many there are in all


def _listed(problems: List[str]) -> List[str]:
    if len(problems) > _LIMIT:
        return problems[:_LIMIT] + [f"and {len(problems) - _LIMIT} more"]
    return problems


def non_tensor_entries(state_dict: Mapping) -> List[str]:
    """Keys of ``state_dict`` whose value is not a tensor (``"key (a str)"``); at most 4 are named, then a count."""
    return _listed([f"{key} (a {type(value).__name__})" for key, value in state_dict.items()
                    if not isinstance(value, torch.Tensor)])


def non_finite_entries(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Floating-point tensors of ``state_dict`` holding NaN or infinity, as ``"key (n of m values)"``.

    Non-tensor values and integer tensors are skipped (see :func:`non_tensor_entries`, :func:`dtype_problems`).
    """
    problems = []
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                problems.append(f"{key} ({bad} of {value.numel()} values are NaN or infinite)")
    return _listed(problems)


def _kind(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "boolean"
    if tensor.is_complex():
        return "complex"
    return "floating-point" if tensor.is_floating_point() else "integer"


def dtype_problems(state_dict: Mapping[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> List[str]:
    """Entries of ``state_dict`` whose kind of dtype (floating point, integer, boolean, complex) differs from the
    model's tensor of the same key in ``expected`` (``model.state_dict()``), as ``"key is int64 where the model
    holds float32"``. A float16 file for a float32 model is fine (``load_state_dict`` converts it exactly);
    keys missing from either side are left to ``load_state_dict``'s own key check.
    """
    problems = []
    for key, target in expected.items():
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and _kind(value) != _kind(target):
            problems.append(f"{key} is {str(value.dtype).replace('torch.', '')} where the model holds "
                            f"{str(target.dtype).replace('torch.', '')}")
    return _listed(problems)
