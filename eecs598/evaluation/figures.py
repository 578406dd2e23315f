"""The detections figure of a run: a grid of val images with GT (red) and predictions (green)."""
from typing import Dict, List, Optional

from torch.utils.data import DataLoader, Subset

from .. import utils
from ..data.transforms import unnormalize
from .evaluator import DatasetEvaluator, ImageResult, inference_on_dataset

__all__ = ["DetectionGrid", "draw_detections"]


class DetectionGrid(DatasetEvaluator):
    """Draws the first ``num_images`` images it sees into one figure saved at ``path``."""

    def __init__(self, idx_to_class: Dict[int, str], path: str, num_images: int = 8, cols: int = 4,
                 title: Optional[str] = None):
        self.idx_to_class, self.path, self.num_images, self.cols, self.title = idx_to_class, path, num_images, cols, title
        self.items: List[ImageResult] = []

    def reset(self) -> None:
        self.items = []

    def process(self, result: ImageResult) -> None:
        if len(self.items) < self.num_images:
            self.items.append(result)

    def evaluate(self) -> str:
        import matplotlib.pyplot as plt

        rows = max(1, -(-self.num_images // self.cols))
        fig, axes = plt.subplots(rows, self.cols, figsize=(3.2 * self.cols, 3.2 * rows), squeeze=False)
        for ax, item in zip(axes.flat, self.items):
            utils.detection_visualizer(unnormalize(item.image), self.idx_to_class, item.gt, item.predictions,
                                       show=False, ax=ax)
        for ax in axes.flat:
            ax.axis("off")
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
        return self.path


def draw_detections(model, dataset, path: str, device: str = "cpu", num_images: int = 8, score_thresh: float = 0.4,
                    nms_thresh: float = 0.5) -> str:
    """Grid of the first ``num_images`` images of ``dataset``: GT red, predictions (score > ``score_thresh``)
    green; saved at ``path``."""
    subset = Subset(dataset, range(min(num_images, len(dataset))))
    grid = DetectionGrid(dataset.idx_to_class, path, num_images,
                         title=f"val: ground truth (red), predictions with score > {score_thresh:g} (green)")
    return inference_on_dataset(model, DataLoader(subset, batch_size=1), [grid], score_thresh, nms_thresh,
                                device=device, progress=False, caller="draw_detections")[0]
