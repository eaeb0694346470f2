"""Data for training and evaluation: Cityscapes (official layout, hub or parquet), a synthetic Cityscapes, and
mmsegmentation's Cityscapes pipeline on torchvision.transforms.v2."""

from .cityscapes import (
    IGNORE_INDEX,
    LABEL_ENCODINGS,
    labelid_to_trainid_table,
    load_cityscapes,
    load_segmentation_dataset,
    resolve_label_encoding,
)
from .synthetic import make_synthetic_cityscapes
from .transforms import (
    AugmentedDataset,
    CityscapesEvalTransform,
    CityscapesTrainTransform,
    PadTo,
    PhotoMetricDistortion,
    RandomCropCatMax,
    RandomRescale,
)

__all__ = [
    "IGNORE_INDEX",
    "LABEL_ENCODINGS",
    "AugmentedDataset",
    "CityscapesEvalTransform",
    "CityscapesTrainTransform",
    "PadTo",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "RandomRescale",
    "labelid_to_trainid_table",
    "load_cityscapes",
    "load_segmentation_dataset",
    "make_synthetic_cityscapes",
    "resolve_label_encoding",
]
