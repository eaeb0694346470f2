"""Streaming mean IoU with the semantics and output keys of evaluate's `mean_iou`, on a confusion matrix.

evaluate's `mean_iou` keeps every map until `compute` (PNG-encoding each one on the way); here each batch is folded
into an `(num_labels + 1)^2` confusion matrix as it arrives, on the device the maps live on, so memory does not grow
with the dataset and GPU tensors never leave the GPU. The extra row/column collects values outside `[0, num_labels)`
so that such predictions still count towards the union of the class they were confused with, as in evaluate.

Semantics, as in evaluate's `intersect_and_union` (huggingface/evaluate `metrics/mean_iou/mean_iou.py`):
- `label_map` is applied to the references first (every mapping reads the original values), then `reduce_labels`
  (0 -> 255, others - 1, 254 -> 255).
- Pixels whose reference equals `ignore_index` are dropped from the references *and* the predictions.
- Values outside `[0, num_labels)` count for no class of their own, but still enlarge the other side's union.
- IoU and accuracy are summed over all images first (not averaged per image); classes absent from both sides are NaN
  and left out of `mean_iou` / `mean_accuracy`; `nan_to_num` replaces NaNs only after the means are taken.

Three ways to use it: `MeanIoU.add_batch` / `compute` (numpy or torch, any device), `TrainerMeanIoU` as a Trainer
`compute_metrics` with `batch_eval_metrics=True`, and the evaluate module at `EVALUATE_MODULE_PATH`
(`evaluate.load(EVALUATE_MODULE_PATH)`, offline).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Directory of the evaluate module built on `MeanIoU`: `evaluate.load(EVALUATE_MODULE_PATH)` works offline.
EVALUATE_MODULE_PATH = str(Path(__file__).parent / "evaluate_metrics" / "fastfcn_mean_iou")

#: The label value Trainer pads with when it gathers maps of different sizes across processes.
TRAINER_PAD_INDEX = -100


def _as_tensor(array: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        tensor = array
    else:
        array = np.asarray(array)
        if array.dtype == np.uint16 or array.dtype == np.uint32:  # torch has no unsigned wide integers
            array = array.astype(np.int64)
        with warnings.catch_warnings():  # read-only arrays (e.g. decoded images) are never written to here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(
            f"Label maps must hold integer class indices, got dtype {tensor.dtype}; take the argmax of logits first."
        )
    return tensor.to(device) if device is not None else tensor


def _is_single_map(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 2


class MeanIoU:
    """Accumulates a confusion matrix; `compute()` returns evaluate's `mean_iou` keys.

    Args:
        num_labels: number of classes.
        ignore_index: reference value whose pixels are dropped from both the references and the predictions
            (`None`: nothing is ignored).
        nan_to_num: if set, NaNs in the results (classes absent from both sides) are replaced by this value after the
            means are taken (the means always leave absent classes out), as evaluate does.
        label_map: `{old_id: new_id}` applied to the references before anything else.
        reduce_labels: ADE20K style: reference 0 becomes 255 and every other value is decremented.
        device: where the confusion matrix lives (default: the device of the first batch).

    Example:

    ```python
    >>> import numpy as np
    >>> metric = MeanIoU(num_labels=3)
    >>> metric.add_batch(predictions=[np.array([[0, 1], [2, 2]])], references=[np.array([[0, 1], [2, 255]])])
    >>> float(metric.compute()["mean_iou"])
    1.0
    ```
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        nan_to_num: float | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
        self.num_labels = int(num_labels)
        self.ignore_index = ignore_index
        self.nan_to_num = nan_to_num
        self.label_map = dict(label_map) if label_map else None
        self.reduce_labels = reduce_labels
        self._device = torch.device(device) if device is not None else None
        self.confusion: torch.Tensor | None = None
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def reset(self) -> None:
        """Forget everything added so far."""
        self.confusion = None

    def _prepare_reference(self, reference: torch.Tensor) -> torch.Tensor:
        reference = reference.long()
        if self.label_map:  # every mapping reads the original values; the caller's map is never written to
            mapped = reference.clone()
            for old_id, new_id in self.label_map.items():
                mapped[reference == old_id] = new_id
            reference = mapped
        if self.reduce_labels:
            reference = torch.where(reference == 0, 255, reference - 1)
            reference = torch.where(reference == 254, 255, reference)
        return reference

    def _lookup_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Value -> confusion-matrix offset tables for references and predictions, indexed by `value + 1`.

        Values are clamped to `[-1, high]` first; -1 and `high` stand for every value outside `[0, num_labels)`.
        The ignore index, when it fits, maps to a sentinel row past the matrix. Returns the tables and `high`.
        """
        if device not in self._tables:
            n, ignore = self.num_labels, self.ignore_index
            ignore_in_table = ignore is not None and 0 <= ignore <= 65535
            high = max(n, ignore + 1) if ignore_in_table else n
            reference_table = torch.full((high + 2,), n * (n + 1), dtype=torch.int64)
            reference_table[1 : n + 1] = torch.arange(n) * (n + 1)
            if ignore_in_table:
                reference_table[ignore + 1] = (n + 1) ** 2  # the sentinel row, dropped after counting
            prediction_table = torch.full((high + 2,), n, dtype=torch.int64)
            prediction_table[1 : n + 1] = torch.arange(n)
            self._tables[device] = (reference_table.to(device), prediction_table.to(device), high)
        return self._tables[device]

    def _fold(self, prediction: torch.Tensor, reference: torch.Tensor) -> None:
        """Add one `[H, W]` pair (or a stacked `[B, H, W]` pair) to the confusion matrix."""
        if prediction.shape != reference.shape:
            raise ValueError(
                f"A prediction of shape {tuple(prediction.shape)} does not match its reference of shape "
                f"{tuple(reference.shape)}; resize the prediction to the label size first."
            )
        n = self.num_labels
        if self.label_map or self.reduce_labels:
            reference = self._prepare_reference(reference)
        reference_table, prediction_table, high = self._lookup_tables(reference.device)
        # index = reference bin * (n + 1) + prediction bin, bin n for values outside [0, n); one gather per map
        index = torch.take(reference_table, reference.long().clamp(-1, high).add_(1))
        index += torch.take(prediction_table, prediction.long().clamp(-1, high).add_(1))
        ignore = self.ignore_index
        if ignore is not None and not 0 <= ignore <= 65535:  # an ignore index the table cannot hold
            index = torch.where(reference == ignore, (n + 1) ** 2, index)
        # ignored pixels land past the matrix and are sliced off: no boolean masking, no host sync on the GPU
        counts = torch.bincount(index.flatten(), minlength=(n + 1) ** 2 + n + 1)[: (n + 1) ** 2]
        counts = counts.view(n + 1, n + 1)
        if self.confusion is None:
            self.confusion = torch.zeros_like(counts)
        self.confusion += counts.to(self.confusion.device)

    def add_batch(self, predictions: Iterable[Any] | Any, references: Iterable[Any] | Any) -> None:
        """Add maps: a list of `[H, W]` maps (sizes may differ between items) or one `[B, H, W]` / `[H, W]` array.

        numpy arrays, torch tensors (any device) and nested lists are accepted; predictions are class indices.
        """
        predictions = [predictions] if _is_single_map(predictions) else list(predictions)
        references = [references] if _is_single_map(references) else list(references)
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
        for prediction, reference in zip(predictions, references):
            device = self._device
            if device is None:
                device = self.confusion.device if self.confusion is not None else None
            if device is None and isinstance(prediction, torch.Tensor):
                device = prediction.device
            self._fold(_as_tensor(prediction, device), _as_tensor(reference, device))

    def add_confusion(self, confusion: torch.Tensor | np.ndarray) -> None:
        """Add a confusion matrix from elsewhere (another rank, another accumulator)."""
        confusion = torch.as_tensor(confusion).long()
        expected = (self.num_labels + 1, self.num_labels + 1)
        if tuple(confusion.shape) != expected:
            raise ValueError(f"Expected a confusion matrix of shape {expected}, got {tuple(confusion.shape)}.")
        if self.confusion is None:
            self.confusion = confusion.clone().to(self._device) if self._device else confusion.clone()
        else:
            self.confusion += confusion.to(self.confusion.device)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the confusion matrix over all ranks of `torch.distributed` (call it on every rank, before `compute`).

        A no-op outside distributed runs. Ranks that saw no data contribute zeros.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.confusion is None:
            device = self._device
            if device is None and dist.get_backend(group) == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            n = self.num_labels + 1
            self.confusion = torch.zeros((n, n), dtype=torch.int64, device=device)
        dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM, group=group)

    def compute(self, predictions: Any | None = None, references: Any | None = None) -> dict[str, Any]:
        """evaluate's keys: mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy.

        Maps passed here are added first, as in `evaluate.Metric.compute(predictions=..., references=...)`.
        Values are numpy float64 scalars and `[num_labels]` arrays, as evaluate returns them.
        """
        if predictions is not None or references is not None:
            self.add_batch(
                predictions if predictions is not None else [], references if references is not None else []
            )
        n = self.num_labels
        if self.confusion is None:
            confusion = np.zeros((n + 1, n + 1), dtype=np.int64)
        else:
            confusion = self.confusion.detach().cpu().numpy().astype(np.int64)
        intersect = np.diag(confusion)[:n].astype(np.float64)
        area_label = confusion[:n].sum(axis=1).astype(np.float64)
        area_prediction = confusion[:, :n].sum(axis=0).astype(np.float64)
        union = area_prediction + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"), np.testing.suppress_warnings() as suppressed:
            suppressed.filter(RuntimeWarning)  # nanmean of an all-NaN array
            iou = intersect / union
            accuracy = intersect / area_label
            results = {
                "mean_iou": np.nanmean(iou),
                "mean_accuracy": np.nanmean(accuracy),
                "overall_accuracy": intersect.sum() / area_label.sum(),
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }
        if self.nan_to_num is not None:
            results = {key: np.nan_to_num(value, nan=self.nan_to_num) for key, value in results.items()}
        return results


def mean_iou(
    predictions: Iterable[Any],
    references: Iterable[Any],
    num_labels: int,
    ignore_index: int | None,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """Drop-in for `evaluate.load("mean_iou").compute(...)`: same arguments, same keys, same values."""
    metric = MeanIoU(num_labels, ignore_index, nan_to_num=nan_to_num, label_map=label_map, reduce_labels=reduce_labels)
    return metric.compute(predictions=predictions, references=references)


def flatten_results(results: Mapping[str, Any], id2label: Mapping[int, str] | None = None) -> dict[str, float]:
    """`compute()`'s output as flat floats: the three means, then `iou_<class>` and `accuracy_<class>` per class.

    Class names are used as they are, like transformers' semantic-segmentation example does.
    """
    num_labels = len(results["per_category_iou"])
    names = [str(id2label[i]) if id2label and i in id2label else str(i) for i in range(num_labels)]
    flat = {key: float(results[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    flat.update({f"iou_{name}": float(value) for name, value in zip(names, results["per_category_iou"])})
    flat.update({f"accuracy_{name}": float(value) for name, value in zip(names, results["per_category_accuracy"])})
    return flat


class TrainerMeanIoU:
    """A Trainer `compute_metrics` for `TrainingArguments(batch_eval_metrics=True)`: streaming, nothing accumulated.

    Trainer calls it once per evaluation batch with that batch's logits (stride 8, on the device) and labels; the
    logits are upsampled bilinearly to the label size and arg-maxed on the device, one image at a time to bound
    memory, and folded into a confusion matrix. On the last batch (`compute_result=True`) it returns flat floats
    (see `flatten_results`) and resets for the next evaluation. Trainer has already gathered the batch across
    ranks; its padding value (-100) is treated as ignored.

    Args:
        num_labels: number of classes.
        ignore_index: label value to ignore (the config's `semantic_loss_ignore_index`).
        id2label: class names for the per-class keys (default: the class index).
        align_corners: the model's `config.align_corners`, for the upsampling.

    Example:

    ```python
    trainer = Trainer(model, TrainingArguments(..., batch_eval_metrics=True),
                      compute_metrics=TrainerMeanIoU(19, id2label=model.config.id2label))
    ```
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        id2label: Mapping[int, str] | None = None,
        align_corners: bool = False,
    ) -> None:
        self.metric = MeanIoU(num_labels, ignore_index=ignore_index)
        self.ignore_index = ignore_index
        self.id2label = {int(key): value for key, value in id2label.items()} if id2label else None
        self.align_corners = align_corners

    def update(self, logits: Any, labels: Any) -> None:
        """Fold one batch of `[B, C, h, w]` logits and `[B, H, W]` labels into the confusion matrix."""
        if isinstance(logits, tuple | list):  # (logits, hidden_states, ...) when the model returns more
            logits = logits[0]
        logits = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        labels = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
        labels = labels.to(logits.device)
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Expected logits [B, C, h, w] and labels [B, H, W] of one batch size, got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}."
            )
        if logits.shape[1] != self.metric.num_labels:
            raise ValueError(f"The logits have {logits.shape[1]} classes, the metric {self.metric.num_labels}.")
        labels = labels.long()
        labels = torch.where(labels == TRAINER_PAD_INDEX, self.ignore_index, labels)
        for logit, label in zip(logits, labels):
            upsampled = F.interpolate(logit[None].float(), size=label.shape, mode="bilinear",
                                      align_corners=self.align_corners)  # fmt: skip
            self.metric.add_batch(upsampled[0].argmax(dim=0), label)

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        results = flatten_results(self.metric.compute(), self.id2label)
        self.metric.reset()
        return results


__all__ = ["EVALUATE_MODULE_PATH", "MeanIoU", "TrainerMeanIoU", "flatten_results", "mean_iou"]
