"""Inference modes: whole image, sliding window, and multi-scale + flip on top of either, as mmsegmentation runs them.

    pixel_values [B, 3, H, W]  (normalised; any size; one size per batch)
      whole:  model -> logits [B, C, H/8, W/8] -> bilinear resize -> [B, C, H, W]
      slide:  crops of `crop_size` every `stride` (mmseg's grid: the last row/column is shifted back inside the
              image; an image smaller than the crop is run as it is, unpadded) -> whole on each crop -> logits of
              overlapping crops summed and divided by the number of crops covering each pixel
      scales / flip: for each ratio r the image is resized to (int(H r + .5), int(W r + .5)) and optionally mirrored,
              run through whole or slide, mirrored back and resized to (H, W); the softmax probabilities of all
              passes are averaged (mmseg's SegTTAModel), or their logits with `average="logits"`

`segment()` returns scores at the input size: logits for a single pass, averaged probabilities (or logits) with
test-time augmentation; `argmax(dim=1)` gives the label map either way. mmseg resizes the uint8 image with OpenCV
before normalising; here the normalised tensor is resized (bilinear, align_corners=False), which differs only by the
uint8 rounding.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

Mode = Literal["whole", "slide"]
Average = Literal["probabilities", "logits"]

#: mmsegmentation's multi-scale test ratios (its `tta_pipeline` for Cityscapes and ADE20K).
DEFAULT_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: File name endings `expand_image_paths` picks up in folders and globs.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

T = TypeVar("T")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {value!r}.")
    return pair


def _align_corners(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "align_corners", False))


def _resize(scores: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=align_corners)


def whole_inference(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """One forward pass of the whole batch; logits resized to the input size (mmseg's `whole` test mode)."""
    logits = model(pixel_values=pixel_values).logits
    return _resize(logits, tuple(pixel_values.shape[-2:]), _align_corners(model))


def slide_grid(height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, ...]]:
    """The `(y1, y2, x1, x2)` windows of mmseg's `slide_inference`, row by row.

    Windows start every `stride`; one that would cross the border is shifted back to end on it, and a dimension
    smaller than the crop is covered by a single window of the image's own extent.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    columns = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for column in range(columns):
            y2, x2 = min(row * stride_h + crop_h, height), min(column * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_inference(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Sliding-window logits at the input size: whole inference per crop, overlaps averaged (mmseg's `slide`).

    `stride` defaults to two thirds of the crop (mmseg's Cityscapes setting: crop 512x1024, stride 341x683).
    """
    crop_size = _pair(crop_size, "crop_size")
    stride = _pair(stride, "stride") if stride is not None else tuple(max(1, round(c * 2 / 3)) for c in crop_size)
    height, width = pixel_values.shape[-2:]
    logits_sum, count = None, pixel_values.new_zeros((1, 1, height, width))
    for y1, y2, x1, x2 in slide_grid(height, width, crop_size, stride):
        crop_logits = whole_inference(model, pixel_values[:, :, y1:y2, x1:x2])
        if logits_sum is None:
            logits_sum = crop_logits.new_zeros((*crop_logits.shape[:2], height, width))
        logits_sum[:, :, y1:y2, x1:x2] += crop_logits
        count[:, :, y1:y2, x1:x2] += 1
    return logits_sum / count


@torch.no_grad()
def segment(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    mode: Mode = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    flip: bool = False,
    average: Average = "probabilities",
) -> torch.Tensor:
    """Scores `[B, C, H, W]` at the input size; `.argmax(dim=1)` gives the label maps.

    Args:
        model: a FastFCN model (or any model whose output has `.logits`), in eval mode.
        pixel_values: normalised images `[B, 3, H, W]` of one size (see `FastFCNImageProcessor`).
        mode: `"whole"` (mmseg's test mode for FastFCN) or `"slide"` (needs `crop_size`).
        crop_size, stride: the sliding window, `int` or `(height, width)`.
        scales: resize ratios for multi-scale testing, e.g. `DEFAULT_SCALES`; `None` runs at the input size only.
        flip: also run every scale mirrored left-right.
        average: with `scales` or `flip`, average softmax `"probabilities"` (mmseg) or raw `"logits"`.

    Returns:
        Logits for a single pass; the averaged probabilities or logits with test-time augmentation.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"`mode` must be 'whole' or 'slide', got {mode!r}.")
    if mode == "slide" and crop_size is None:
        raise ValueError("`mode='slide'` needs `crop_size`, e.g. (512, 1024) for Cityscapes.")
    if average not in ("probabilities", "logits"):
        raise ValueError(f"`average` must be 'probabilities' or 'logits', got {average!r}.")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a [batch, channels, height, width] tensor, got {shape}.")

    def single_pass(images: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            return slide_inference(model, images, crop_size, stride)
        return whole_inference(model, images)

    if scales is None and not flip:
        return single_pass(pixel_values)

    scales = tuple(scales) if scales is not None else (1.0,)
    if not scales or min(scales) <= 0:
        raise ValueError(f"`scales` must be positive ratios, got {scales!r}.")
    height, width = pixel_values.shape[-2:]
    align_corners = _align_corners(model)
    total, passes = None, 0
    for ratio in scales:
        size = (max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5)))
        scaled = _resize(pixel_values, size, align_corners=False)  # the image resize of mmseg's Resize transform
        for mirrored in (False, True) if flip else (False,):
            scores = single_pass(scaled.flip(-1) if mirrored else scaled)
            scores = _resize(scores.flip(-1) if mirrored else scores, (height, width), align_corners)
            scores = scores.softmax(dim=1) if average == "probabilities" else scores
            total = scores if total is None else total + scores
            passes += 1
    return total / passes


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the predict / evaluate commands: finding images, batching by size, running a model over them.
# ----------------------------------------------------------------------------------------------------------------


def expand_image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly, found (recursively) in folders, or matched by glob patterns, in order.

    Raises `FileNotFoundError` naming the input when a path does not exist, a folder holds no images, or a pattern
    matches nothing.
    """
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"The folder {text} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            found = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise FileNotFoundError(f"The pattern {text!r} matches no images.")
            paths.extend(found)
        else:
            raise FileNotFoundError(f"No such image, folder or pattern: {text}")
    if not paths:
        raise FileNotFoundError("No input images given.")
    return paths


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image; an unreadable file raises `ValueError` naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read {path} as an image: {error}") from error


def load_model(source: str | os.PathLike, random_weights: bool = False) -> tuple[torch.nn.Module, Any, str]:
    """`(model, processor, name)` from a saved directory, a hub repo id or a variant name (see `list_models()`).

    A variant with released weights loads them from the hub unless `random_weights`; other variants are built with
    random weights (useful for smoke tests only). The processor comes from the directory / repo when it has one,
    else from the model's config.
    """
    from .image_processing_fastfcn import FastFCNImageProcessor
    from .modeling_fastfcn import FastFCNForSemanticSegmentation
    from .variants import create_model, get_variant

    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{text} is a folder but not a saved model (no config.json).")
        model = FastFCNForSemanticSegmentation.from_pretrained(path)
        has_processor = (path / "preprocessor_config.json").is_file()
        processor = FastFCNImageProcessor.from_pretrained(path) if has_processor else None
        name = path.resolve().name
    else:
        try:
            variant = get_variant(text)
        except KeyError as error:
            if "/" not in text:
                raise ValueError(f"{text!r} is not a model folder, a hub repo id (owner/name) or a variant: {error}")
            variant = None
        if variant is not None:
            pretrained = variant.released and not random_weights
            if not pretrained:
                warnings.warn(f"{variant.name}: random weights (no released checkpoint loaded).", stacklevel=2)
            model = create_model(text, pretrained=pretrained)
            processor, name = None, variant.name
        else:
            try:
                model = FastFCNForSemanticSegmentation.from_pretrained(text)
            except OSError as error:
                raise OSError(f"Could not load the model {text!r} from the hub (offline, or not cached): {error}")
            try:
                processor = FastFCNImageProcessor.from_pretrained(text)
            except OSError:
                processor = None
            name = text.replace("/", "--")
    processor = processor or FastFCNImageProcessor.from_config(model.config)
    return model.eval(), processor, name


def batches_by_size(items: Iterable[T], size_of: Callable[[T], tuple[int, int]], batch_size: int) -> Iterator[list[T]]:
    """Consecutive items grouped into batches of at most `batch_size` that share one size, order kept."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    batch: list[T] = []
    for item in items:
        if batch and (len(batch) == batch_size or size_of(item) != size_of(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def predict_label_maps(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Image.Image],
    device: torch.device | str | None = None,
    **segment_kwargs: Any,
) -> list[np.ndarray]:
    """Label maps `[H, W]` (int64, at each image's own size) of a batch of same-size PIL images."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(device)
    scores = segment(model, pixel_values, **segment_kwargs)
    height, width = images[0].height, images[0].width
    if tuple(scores.shape[-2:]) != (height, width):  # the processor resized: back to the original size (ori_shape)
        scores = _resize(scores, (height, width), _align_corners(model))
    return list(scores.argmax(dim=1).cpu().numpy())


def predict_images(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[Image.Image],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    **segment_kwargs: Any,
) -> Iterator[np.ndarray]:
    """Label maps of any number of PIL images of any sizes, in order; images of one size are batched together.

    `segment_kwargs` are `segment()`'s (`mode`, `crop_size`, `stride`, `scales`, `flip`, `average`).
    """
    for batch in batches_by_size(images, lambda image: image.size, batch_size):
        yield from predict_label_maps(model, processor, batch, device=device, **segment_kwargs)


__all__ = [
    "DEFAULT_SCALES",
    "IMAGE_EXTENSIONS",
    "batches_by_size",
    "expand_image_paths",
    "load_image",
    "load_model",
    "predict_images",
    "predict_label_maps",
    "segment",
    "slide_grid",
    "slide_inference",
    "whole_inference",
]
