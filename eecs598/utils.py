"""Image helpers: tensor <-> image conversion and drawing boxes for detection results."""
from typing import Dict, List, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["tensor_to_image", "detection_visualizer", "plot_loss_history"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """Convert a ``(3, H, W)`` float tensor with values in ``[0, 1]`` to an ``(H, W, 3)`` uint8 array.

    Values are scaled by 255, rounded, and clamped to ``[0, 255]``.
    """
    if tensor.dim() != 3:
        raise ValueError(f"tensor_to_image expects a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    image = tensor.detach().float().mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0)
    return image.to("cpu", torch.uint8).numpy()


def _as_rows(x: Optional[ArrayLike]) -> np.ndarray:
    """Any box container -> float64 array of rows (possibly with zero rows)."""
    if x is None:
        return np.zeros((0, 6))
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(0, 6) if x.size == 0 else np.atleast_2d(x)


def detection_visualizer(
    img: Union[torch.Tensor, np.ndarray],
    idx_to_class: Dict[int, str],
    bbox: Optional[ArrayLike] = None,
    pred: Optional[ArrayLike] = None,
    points: Optional[ArrayLike] = None,
    show: bool = True,
    ax: Optional[plt.Axes] = None,
) -> plt.Figure:
    """Draw ground-truth boxes, predictions and points on an image.

    Args:
        img: ``(3, H, W)`` tensor with values in ``[0, 1]``, or an ``(H, W, 3)`` uint8 array.
        idx_to_class: maps class ids to names, used for the labels.
        bbox: GT rows ``(x1, y1, x2, y2[, class_id])`` in image pixels, drawn in red with the class
            name. Rows with ``class_id == -1`` (padding) are skipped.
        pred: prediction rows ``(x1, y1, x2, y2, class_id, score)``, drawn in green with
            ``"{class}, {score:.2f}"``.
        points: ``(N, 2)`` ``(x, y)`` points, drawn in yellow.
        show: call ``plt.show()`` at the end (as the notebook expects). Set ``False`` to only
            build and return the figure, e.g. to save it.
        ax: draw into this axes instead of a new figure.

    Returns:
        The matplotlib ``Figure`` (so that callers can ``savefig`` it).
    """
    if isinstance(img, torch.Tensor):
        img = tensor_to_image(img)
    img = np.asarray(img)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / max(img.shape[1], 1)))
    else:
        fig = ax.figure
    ax.imshow(img)
    ax.axis("off")

    def draw(rows: np.ndarray, color: str, with_score: bool) -> None:
        for row in rows:
            if row.shape[0] > 4 and row[4] < 0:  # padding row
                continue
            x1, y1, x2, y2 = row[:4]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))
            if row.shape[0] > 4:
                label = idx_to_class.get(int(row[4]), str(int(row[4])))
                if with_score and row.shape[0] > 5:
                    label = f"{label}, {row[5]:.2f}"
                ax.text(x1, y1, label, fontsize=8, color="black", va="bottom",
                        bbox=dict(facecolor=color, alpha=0.7, pad=1, edgecolor="none"))

    draw(_as_rows(bbox), "red", with_score=False)
    draw(_as_rows(pred), "lime", with_score=True)
    pts = _as_rows(points)
    if pts.size:
        ax.scatter(pts[:, 0], pts[:, 1], s=12, c="yellow", edgecolors="black", linewidths=0.5)
    if show:
        plt.show()
    return fig


# Iterations of the moving average drawn over the raw losses.
SMOOTHING_WINDOW = 20


def plot_loss_history(history: Dict[str, List[float]], path: Optional[str] = None,
                      ax: Optional[plt.Axes] = None) -> plt.Figure:
    """Plot per-iteration losses (e.g. ``train_detector``'s return value): raw values faint, a moving
    average solid; the legend says which is which.

    Args:
        history: ``{loss_name: [value per iteration]}``.
        path: save the figure there (PNG) if given.
        ax: draw into this axes instead of a new figure.

    Returns:
        The matplotlib ``Figure``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    else:
        fig = ax.figure
    window = 1
    for name, values in history.items():
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            continue
        line, = ax.plot(values, alpha=0.25, linewidth=0.8)
        window = max(1, min(SMOOTHING_WINDOW, values.size))
        average = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, values.size), average, color=line.get_color(),
                label=f"{name} ({window}-iteration mean)", linewidth=2 if name == "total" else 1.2)
    ax.plot([], [], color="gray", alpha=0.25, linewidth=0.8, label="faint: raw per-iteration values")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
