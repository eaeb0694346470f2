"""evaluate module for mean IoU, computed by fastfcn_hub's confusion-matrix `MeanIoU`.

Load it offline with `evaluate.load(fastfcn_hub.metrics.EVALUATE_MODULE_PATH)`. Arguments, keys and values are those
of evaluate's `mean_iou` (`compute(predictions, references, num_labels, ignore_index, nan_to_num, label_map,
reduce_labels)`); only the arithmetic differs. Inputs go through the same `datasets.Image()` features as evaluate's
module, so this path pays the same PNG encoding per map: for speed, use `fastfcn_hub.metrics.MeanIoU` directly.
"""

from __future__ import annotations

import datasets
import evaluate

from fastfcn_hub.metrics import MeanIoU

_DESCRIPTION = """Mean Intersection-over-Union over a dataset, from one confusion matrix (semantics of evaluate's
`mean_iou`: ignored reference pixels are dropped from the predictions too, classes absent from both sides are NaN and
left out of the means)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[ndarray]`): predicted label maps, each (height, width); sizes may differ between items.
    references (`list[ndarray]`): ground-truth label maps, each the size of its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value to ignore (in the predictions too).
    nan_to_num (`float`, *optional*): replaces NaNs after the means are taken.
    label_map (`dict`, *optional*): old -> new reference ids, all read from the original values.
    reduce_labels (`bool`, *optional*, defaults to `False`): reference 0 -> 255, others - 1.
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy (ndarrays).
"""

_CITATION = """@inproceedings{wu2019fastfcn, title={FastFCN: Rethinking Dilated Convolution in the Backbone for
Semantic Segmentation}, author={Wu, Huikai and Zhang, Junge and Huang, Kaiqi and Liang, Kongming and Yu, Yizhou},
booktitle={arXiv preprint arXiv:1903.11816}, year={2019}}"""


class FastfcnMeanIou(evaluate.Metric):
    """Mean IoU with evaluate's interface; the arithmetic is `fastfcn_hub.metrics.MeanIoU`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: float | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        metric = MeanIoU(num_labels, ignore_index, nan_to_num=nan_to_num, label_map=label_map,
                         reduce_labels=reduce_labels)  # fmt: skip
        for prediction, reference in zip(predictions, references):
            metric.add_batch(predictions=[prediction], references=[reference])
        return metric.compute()
