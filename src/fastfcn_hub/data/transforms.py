"""mmsegmentation's Cityscapes pipeline on torchvision.transforms.v2, image and label map transformed together.

Train: random rescale of a (2048, 1024) scale by a ratio in [0.5, 2.0] keeping the aspect ratio -> random
512x1024 crop whose largest class covers under 75% (`cat_max_ratio`) -> horizontal flip -> photometric distortion
-> normalisation -> padding to the crop size (image 0, labels 255). Eval: the whole image, resized to the scale
keeping its aspect ratio (a no-op on 2048x1024 Cityscapes), normalised; the label keeps its original size, because
metrics are computed at the original resolution. All randomness comes from torch's global generator, so the
Trainer's seed (and its saved RNG state on resume) fixes every augmentation.

The transforms are callables on a `datasets` batch (`{"image": [...], "label": [...]}` -> `{"pixel_values",
"labels"}`), for `dataset.with_transform(...)`; `apply(image, label)` does one pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IGNORE_INDEX = 255


def _rescaled_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size whose long and short edges fit `scale` (long, short)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomRescale(v2.Transform):
    """Resize to `scale` x a ratio drawn uniformly from `ratio_range`, keeping the aspect ratio (mmseg RandomResize).

    Images are resized bilinearly without antialiasing (as OpenCV does in mmcv), label maps by nearest neighbour.
    """

    def __init__(self, scale: Sequence[int] = (2048, 1024), ratio_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.ratio_range
        ratio = low + (high - low) * torch.rand(()).item()
        height, width = F.get_size(next(i for i in flat_inputs if isinstance(i, tv_tensors.Image)))
        return {"size": _rescaled_size(height, width, [int(edge * ratio) for edge in self.scale])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, list(params["size"]), interpolation=v2.InterpolationMode.NEAREST)
        return F.resize(inpt, list(params["size"]), antialias=False)


class RandomCropCatMax(v2.Transform):
    """A random crop in which no single class covers `cat_max_ratio` or more of the labelled pixels (mmseg RandomCrop).

    Up to 10 crops are tried; a crop larger than the image is clipped to it (padding comes later).
    """

    def __init__(self, size: Sequence[int] = (512, 1024), cat_max_ratio: float = 0.75,
                 ignore_index: int = IGNORE_INDEX) -> None:  # fmt: skip
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = tuple(size), cat_max_ratio, ignore_index

    def _random_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        top = int(torch.randint(0, max(height - self.size[0], 0) + 1, ()).item())
        left = int(torch.randint(0, max(width - self.size[1], 0) + 1, ()).item())
        return top, left, min(self.size[0], height), min(self.size[1], width)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        mask = next(i for i in flat_inputs if isinstance(i, tv_tensors.Mask))
        height, width = mask.shape[-2:]
        box = self._random_box(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                top, left, crop_height, crop_width = box
                _, counts = torch.unique(mask[..., top : top + crop_height, left : left + crop_width],
                                         return_counts=True)  # fmt: skip
                values = torch.unique(mask[..., top : top + crop_height, left : left + crop_width])
                counts = counts[values != self.ignore_index]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._random_box(height, width)
        return {"box": box}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, *params["box"])


class PhotoMetricDistortion(v2.Transform):
    """mmseg's PhotoMetricDistortion on uint8 images; each step with probability 0.5, label maps untouched.

    Brightness: add a delta in [-32, 32]; contrast: multiply by [0.5, 1.5] (before or after the colour steps, at
    random); saturation: x [0.5, 1.5]; hue: shift by up to 18/180 of the hue circle. Values are clipped to 0..255
    after each step, as mmcv does. Saturation uses torchvision's blend with the grey image rather than mmcv's HSV S
    scaling: the same range of effect, not the same pixels.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> None:  # fmt: skip
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    @staticmethod
    def _maybe(low: float, high: float) -> float | None:
        """A factor drawn from [low, high] half of the time, else None (step skipped)."""
        if torch.randint(0, 2, ()).item() == 0:
            return None
        return low + (high - low) * torch.rand(()).item()

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {
            "brightness": self._maybe(-self.brightness_delta, self.brightness_delta),
            "contrast_first": bool(torch.randint(0, 2, ()).item()),
            "contrast": self._maybe(*self.contrast_range),
            "saturation": self._maybe(*self.saturation_range),
            "hue": self._maybe(-self.hue_delta, self.hue_delta),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = inpt.as_subclass(torch.Tensor).float()
        if params["brightness"] is not None:
            image = (image + params["brightness"]).clamp(0, 255).round()
        if params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 255).round()
        if params["saturation"] is not None:
            image = F.adjust_saturation(image / 255, params["saturation"]).mul(255).clamp(0, 255).round()
        if params["hue"] is not None:
            image = F.adjust_hue(image / 255, params["hue"] / 180).mul(255).clamp(0, 255).round()
        if not params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 255).round()
        return tv_tensors.wrap(image.to(torch.uint8), like=inpt)


class PadTo(v2.Transform):
    """Pad at the bottom and right up to `size`: images with `fill` (0 after normalisation), labels with 255."""

    def __init__(self, size: Sequence[int], fill: float = 0.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size, self.fill, self.ignore_index = tuple(size), fill, ignore_index

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        bottom, right = max(self.size[0] - height, 0), max(self.size[1] - width, 0)
        if not bottom and not right:
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else self.fill
        return F.pad(inpt, [0, 0, right, bottom], fill=fill)


class _SegmentationTransform:
    """Shared plumbing: PIL/array inputs -> tv_tensors, the v2 pipeline, batch dicts for `with_transform`."""

    pipeline: v2.Compose

    def __init__(self, image_mean: Sequence[float], image_std: Sequence[float], rescale_factor: float) -> None:
        # The model's normalisation, moved to the 0..255 scale the pipeline works in.
        self.normalize = v2.Normalize(
            [m / rescale_factor for m in image_mean], [s / rescale_factor for s in image_std]
        )

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> _SegmentationTransform:
        """Build with a `FastFCNConfig`'s normalisation and ignore index."""
        return cls(image_mean=config.image_mean, image_std=config.image_std, rescale_factor=config.rescale_factor,
                   ignore_index=config.semantic_loss_ignore_index, **kwargs)  # fmt: skip

    @staticmethod
    def _to_tv(image: Any, label: Any) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
        image = tv_tensors.Image(F.pil_to_tensor(image) if isinstance(image, Image.Image) else torch.as_tensor(image))
        mask = torch.as_tensor(np.asarray(label).astype(np.int64))
        if mask.ndim == 3:
            mask = mask[..., 0] if mask.shape[-1] == 1 else mask[0]
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"Image {tuple(image.shape[-2:])} and label {tuple(mask.shape)} sizes differ (h, w).")
        return image, tv_tensors.Mask(mask)

    def apply(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One (image, label) pair -> (normalised float [3, H, W], int64 [H, W] labels)."""
        pixel_values, labels = self.pipeline(*self._to_tv(image, label))
        return pixel_values.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)

    def __call__(self, examples: dict[str, list]) -> dict[str, list[torch.Tensor]]:
        pairs = [self.apply(image, label) for image, label in zip(examples["image"], examples["label"])]
        return {"pixel_values": [pixel for pixel, _ in pairs], "labels": [label for _, label in pairs]}


class CityscapesTrainTransform(_SegmentationTransform):
    """mmseg's Cityscapes training pipeline (see the module docstring); sizes are configurable.

    Args:
        scale: (long edge, short edge) the image is rescaled to fit at ratio 1 (mmseg's `(2048, 1024)`).
        ratio_range: range of the random scale ratio.
        crop_size: (height, width) of the random crop; smaller images are padded up to it.
        cat_max_ratio: a crop is redrawn (up to 10 times) while one class covers this share of its labelled pixels.
        flip_prob: probability of a horizontal flip.
        photometric: whether to apply `PhotoMetricDistortion`.
        image_mean, image_std, rescale_factor: the model's normalisation (use `from_config`).
        ignore_index: label value for padding and for pixels to ignore.
    """

    def __init__(
        self,
        scale: Sequence[int] = (2048, 1024),
        ratio_range: Sequence[float] = (0.5, 2.0),
        crop_size: Sequence[int] = (512, 1024),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        rescale_factor: float = 1 / 255,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(image_mean, image_std, rescale_factor)
        self.crop_size = tuple(crop_size)
        self.pipeline = v2.Compose([
            RandomRescale(scale, ratio_range),
            RandomCropCatMax(crop_size, cat_max_ratio, ignore_index),
            v2.RandomHorizontalFlip(flip_prob),
            PhotoMetricDistortion() if photometric else v2.Identity(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}),
            self.normalize,
            PadTo(crop_size, fill=0.0, ignore_index=ignore_index),
        ])  # fmt: skip


class CityscapesEvalTransform(_SegmentationTransform):
    """Whole-image evaluation: the image resized to fit `scale` keeping its aspect ratio (None: as is), normalised;
    the label map untouched, so metrics use the original resolution."""

    def __init__(
        self,
        scale: Sequence[int] | None = (2048, 1024),
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        rescale_factor: float = 1 / 255,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(image_mean, image_std, rescale_factor)
        self.scale = tuple(scale) if scale is not None else None
        self.pipeline = v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}), self.normalize])

    def apply(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._to_tv(image, label)
        if self.scale is not None:
            size = _rescaled_size(*image.shape[-2:], self.scale)
            if size != tuple(image.shape[-2:]):
                image = F.resize(image, list(size), antialias=False)
        pixel_values = self.pipeline(image)
        return pixel_values.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class AugmentedDataset(torch.utils.data.Dataset):
    """A map-style dataset of transformed rows whose randomness depends only on (seed, epoch, index).

    Each row is transformed under its own torch seed (drawn from `numpy.random.SeedSequence([seed, epoch, index])`,
    the global generator forked and restored around it), so an augmentation never depends on which rows were read
    before it, in which process, or how far a data loader prefetched. That is what lets a run resumed from a
    checkpoint (which skips the batches already seen) continue exactly as the uninterrupted run. Call `set_epoch`
    at each epoch (the Trainer does, through `fastfcn_hub.training`) for fresh augmentations.
    """

    def __init__(self, dataset: Any, transform: _SegmentationTransform, seed: int = 0) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[int(index)]
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            pixel_values, labels = self.transform.apply(row["image"], row["label"])
        return {"pixel_values": pixel_values, "labels": labels}


__all__ = [
    "AugmentedDataset",
    "CityscapesEvalTransform",
    "CityscapesTrainTransform",
    "PadTo",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "RandomRescale",
]
