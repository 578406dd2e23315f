"""Numerical comparison helpers used by the notebook's checks."""
import torch

__all__ = ["rel_error"]


def rel_error(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> float:
    """Relative error between two tensors: ``max|x - y| / max(clamp(|x| + |y|, min=eps))``.

    Args:
        x, y: tensors of the same shape (any dtype convertible to float).
        eps: lower bound on the denominator, so that two all-zero tensors give 0.

    Returns:
        A Python ``float``; 0 means identical.
    """
    x = torch.as_tensor(x)
    y = torch.as_tensor(y, device=x.device)
    if x.shape != y.shape:
        raise ValueError(f"rel_error: x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}")
    if x.numel() == 0:
        return 0.0
    x, y = x.double(), y.double()
    top = (x - y).abs().max().item()
    bot = (x.abs() + y.abs()).clamp(min=eps).max().item()
    return top / bot
