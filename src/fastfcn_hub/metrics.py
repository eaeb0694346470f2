"""Streaming mean IoU with the semantics and output keys of evaluate's `mean_iou`, on a confusion matrix.

evaluate's `mean_iou` keeps every map until `compute` (PNG-encoding each one on the way); here each batch is folded
into an `(num_labels + 1)^2` confusion matrix as it arrives, on the device the maps live on, so memory does not grow
with the dataset and GPU tensors never leave the GPU. The extra row/column collects values outside `[0, num_labels)`
so that such predictions still count towards the union of the class they were confused with, as in evaluate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch


def _as_tensor(array: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        tensor = array
    else:
        tensor = torch.as_tensor(np.asarray(array))
    return tensor.to(device) if device is not None else tensor


class MeanIoU:
    """Accumulates a confusion matrix; `compute()` returns evaluate's `mean_iou` keys.

    Args:
        num_labels: number of classes.
        ignore_index: label value whose pixels are dropped from both the references and the predictions.
        nan_to_num: if set, NaNs in the results (classes absent from both sides) are replaced by this value after the
            means are taken (the means always leave absent classes out), as evaluate does.
        label_map: `{old_id: new_id}` applied to the references before anything else.
        reduce_labels: ADE20K style: reference 0 becomes 255 and every other value is decremented.
        device: where the confusion matrix lives (default: the device of the first batch).
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        nan_to_num: float | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.nan_to_num = nan_to_num
        self.label_map = dict(label_map) if label_map else None
        self.reduce_labels = reduce_labels
        self._device = torch.device(device) if device is not None else None
        self.confusion: torch.Tensor | None = None

    def reset(self) -> None:
        self.confusion = None

    def _fold(self, prediction: torch.Tensor, reference: torch.Tensor) -> None:
        if prediction.shape != reference.shape:
            raise ValueError(
                f"A prediction of shape {tuple(prediction.shape)} does not match its reference of shape "
                f"{tuple(reference.shape)}; resize the prediction to the label size first."
            )
        reference = reference.long()
        if self.label_map:
            original = reference.clone()
            for old_id, new_id in self.label_map.items():
                reference[original == old_id] = new_id
        if self.reduce_labels:
            reference = torch.where(reference == 0, 255, reference - 1)
            reference[reference == 254] = 255
        keep = reference != self.ignore_index
        n = self.num_labels
        reference, prediction = reference[keep], prediction.long()[keep]
        # values outside [0, n) go to the extra bin n (they count for the other side's class, never for their own)
        reference = torch.where((reference >= 0) & (reference < n), reference, n)
        prediction = torch.where((prediction >= 0) & (prediction < n), prediction, n)
        counts = torch.bincount(reference * (n + 1) + prediction, minlength=(n + 1) ** 2).view(n + 1, n + 1)
        if self.confusion is None:
            self.confusion = torch.zeros_like(counts)
        self.confusion += counts

    def add_batch(self, predictions: Iterable[Any] | Any, references: Iterable[Any] | Any) -> None:
        """Add maps: a list of `[H, W]` maps (sizes may differ between items) or one `[B, H, W]` / `[H, W]` array."""
        predictions = [predictions] if _is_single_map(predictions) else list(predictions)
        references = [references] if _is_single_map(references) else list(references)
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
        for prediction, reference in zip(predictions, references):
            device = self._device or (prediction.device if isinstance(prediction, torch.Tensor) else None)
            prediction, reference = _as_tensor(prediction, device), _as_tensor(reference, device)
            if prediction.ndim == 3 and reference.ndim == 3:  # a stacked batch
                for p, r in zip(prediction, reference):
                    self._fold(p, r)
            else:
                self._fold(prediction, reference)

    def add_confusion(self, confusion: torch.Tensor) -> None:
        """Add a confusion matrix from elsewhere (another rank, another accumulator)."""
        self.confusion = confusion.clone() if self.confusion is None else self.confusion + confusion.to(self.confusion)

    def compute(self) -> dict[str, Any]:
        """evaluate's keys: mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy."""
        n = self.num_labels
        if self.confusion is None:
            confusion = np.zeros((n + 1, n + 1), dtype=np.int64)
        else:
            confusion = self.confusion.detach().cpu().numpy().astype(np.int64)
        intersect = np.diag(confusion)[:n].astype(np.float64)
        area_label = confusion[:n].sum(axis=1).astype(np.float64)
        area_pred = confusion[:, :n].sum(axis=0).astype(np.float64)
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            accuracy = intersect / area_label
            overall = intersect.sum() / area_label.sum()
        with np.testing.suppress_warnings() as suppressed:
            suppressed.filter(RuntimeWarning)  # nanmean of all-NaN
            results = {
                "mean_iou": np.nanmean(iou),
                "mean_accuracy": np.nanmean(accuracy),
                "overall_accuracy": overall,
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }
        if self.nan_to_num is not None:
            results = {key: np.nan_to_num(value, nan=self.nan_to_num) for key, value in results.items()}
        return results


def _is_single_map(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 2


__all__ = ["MeanIoU"]
