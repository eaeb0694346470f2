"""Image processor for FastFCN: raw images in, normalised `pixel_values` (and `labels`) out; logits to label maps.

FastFCN segments whole images at their own size (mmsegmentation's test mode), so resizing is off by default.

Input conversion rules (documented once, applied everywhere):
- PIL images: `RGB` as is; `L`, `P` (through its palette), `RGBA` / `LA` (alpha dropped), `CMYK`, `YCbCr` ... via
  `Image.convert("RGB")`; 16-bit modes (`I;16*`, `I`) are scaled to 8 bits by dividing by 257 (65535 -> 255).
- numpy arrays / torch tensors: `HxW` (grey), `HxWxC` or `CxHxW` with C in {1, 3, 4} (one channel is repeated, a
  fourth channel is dropped as alpha). `uint8` is taken as 0-255, `uint16` / `int32` as 0-65535 (divided by 257),
  floating point as 0-1 (multiplied by 255), `bool` as 0/1 (multiplied by 255).
- Segmentation maps keep their raw values (a `P` map's indices, never its palette colours) and become int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

try:  # PIL is a dependency of transformers' vision extras; keep the import soft for remote-code users
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None


class FastFCNImageProcessorKwargs(ImagesKwargs, total=False):
    do_reduce_labels: bool
    ignore_index: int


def _is_pil(image: Any) -> bool:
    return Image is not None and isinstance(image, Image.Image)


def _pil_to_array(image: Any, is_label: bool) -> np.ndarray:
    if is_label:
        if image.mode in ("RGB", "RGBA"):
            raise ValueError(
                f"A segmentation map must hold class indices (mode 'L', 'P', 'I' or 'I;16'), got a colour image "
                f"(mode {image.mode!r}). Convert colour-coded masks to indices first."
            )
        return np.asarray(image)
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float: the array dtype rules apply
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def _to_hwc_float(image: Any) -> torch.Tensor:
    """One image of any supported kind -> float32 tensor [3, H, W] on the 0-255 scale."""
    if _is_pil(image):
        array = _pil_to_array(image, is_label=False)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"Unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or tensors.")

    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"An image must be HxW, HxWxC or CxHxW; got an array of shape {array.shape}.")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CxHxW -> HxWxC
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Cannot find the channel axis of an image of shape {array.shape}: expected 1, 3 or 4 channels first or "
            "last."
        )

    if array.dtype == np.uint8:
        scaled = array.astype(np.float32)
    elif array.dtype == np.bool_:
        scaled = array.astype(np.float32) * 255.0
    elif np.issubdtype(array.dtype, np.integer):
        scaled = np.clip(array.astype(np.float32) / 257.0, 0, 255)
    elif np.issubdtype(array.dtype, np.floating):
        scaled = np.clip(array.astype(np.float32), 0, 1) * 255.0
    else:
        raise TypeError(f"Unsupported image dtype {array.dtype}.")

    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    elif scaled.shape[-1] == 4:
        scaled = scaled[..., :3]
    return torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)


def _to_label(segmentation_map: Any) -> torch.Tensor:
    if _is_pil(segmentation_map):
        array = _pil_to_array(segmentation_map, is_label=True)
    elif isinstance(segmentation_map, torch.Tensor):
        array = segmentation_map.detach().cpu().numpy()
    elif isinstance(segmentation_map, np.ndarray):
        array = segmentation_map
    else:
        raise TypeError(f"Unsupported segmentation map type {type(segmentation_map).__name__}.")
    array = np.squeeze(array) if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]) else array
    if array.ndim != 2:
        raise ValueError(f"A segmentation map must be HxW class indices, got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise ValueError("A segmentation map must hold integer class indices, got non-integer values.")
    return torch.from_numpy(array.astype(np.int64))


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, list | tuple):
        return list(images)
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


class FastFCNImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for FastFCN and turns its logits into label maps.

    Args:
        do_resize (`bool`, *optional*, defaults to `False`):
            Whether to resize. FastFCN is run on whole images at their own size, as mmsegmentation tests it.
        size (`dict[str, int]`, *optional*):
            `{"height": h, "width": w}` for an exact size, or `{"longest_edge": l, "shortest_edge": s}` to scale
            keeping the aspect ratio so that both edges fit (mmsegmentation's `keep_ratio` resize).
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply 0-255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Rescaling factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean, image_std (`list[float]`, *optional*, default to ImageNet's):
            Normalisation statistics on the rescaled scale. Models built from a config use the config's values.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            ADE20K style: label 0 becomes `ignore_index` and every other label is decremented.
        ignore_index (`int`, *optional*, defaults to 255):
            Label value marking ignored pixels.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = FastFCNImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = False,
        size: dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        do_reduce_labels: bool = False,
        ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if do_resize and not size:
            raise ValueError("`do_resize=True` needs `size`, e.g. {'height': 512, 'width': 1024}.")
        self.do_resize = do_resize
        self.size = dict(size) if size else None
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.do_reduce_labels = do_reduce_labels
        self.ignore_index = ignore_index

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> FastFCNImageProcessor:
        """The processor a model config needs: its normalisation statistics and ignore index."""
        kwargs.setdefault("image_mean", tuple(config.image_mean))
        kwargs.setdefault("image_std", tuple(config.image_std))
        kwargs.setdefault("rescale_factor", config.rescale_factor)
        kwargs.setdefault("ignore_index", config.semantic_loss_ignore_index)
        return cls(**kwargs)

    def _target_size(self, height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
        if "height" in size and "width" in size:
            return size["height"], size["width"]
        if "longest_edge" in size and "shortest_edge" in size:
            scale = min(size["longest_edge"] / max(height, width), size["shortest_edge"] / min(height, width))
            return int(height * scale + 0.5), int(width * scale + 0.5)
        raise ValueError(f"`size` must have height/width or longest_edge/shortest_edge keys, got {size}.")

    def preprocess(
        self,
        images: Any,
        segmentation_maps: Any | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Normalise a batch of images (and optionally their segmentation maps) into `pixel_values` / `labels`.

        Images of one batch must end up the same size (resize them or process them separately).
        """
        options = {key: kwargs.pop(key, getattr(self, key)) for key in (
            "do_resize", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
            "do_reduce_labels", "ignore_index")}  # fmt: skip
        kwargs.pop("data_format", None)
        kwargs.pop("input_data_format", None)
        if kwargs:
            raise TypeError(f"Unexpected arguments for FastFCNImageProcessor: {sorted(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"Only `return_tensors='pt'` is supported, got {return_tensors!r}.")

        images = _as_list(images)
        if not images:
            raise ValueError("No images given.")
        pixel_values = []
        for image in images:
            tensor = _to_hwc_float(image)
            if options["do_resize"]:
                height, width = self._target_size(*tensor.shape[1:], options["size"])
                tensor = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            if options["do_rescale"]:
                tensor = tensor * options["rescale_factor"]
            if options["do_normalize"]:
                mean = torch.tensor(options["image_mean"]).view(-1, 1, 1)
                std = torch.tensor(options["image_std"]).view(-1, 1, 1)
                tensor = (tensor - mean) / std
            pixel_values.append(tensor)
        self._check_same_size(pixel_values, "images")
        data = {"pixel_values": torch.stack(pixel_values)}

        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps)
            if len(maps) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(maps)} segmentation maps.")
            labels = []
            for image_tensor, segmentation_map in zip(pixel_values, maps):
                label = _to_label(segmentation_map)
                if options["do_reduce_labels"]:
                    label = torch.where(label == 0, options["ignore_index"], label - 1)
                    label[label == options["ignore_index"] - 1] = options["ignore_index"]
                if options["do_resize"] or label.shape != image_tensor.shape[1:]:
                    if not options["do_resize"]:
                        raise ValueError(
                            f"A segmentation map of size {tuple(label.shape)} does not match its image of size "
                            f"{tuple(image_tensor.shape[1:])}."
                        )
                    label = F.interpolate(label[None, None].float(), size=image_tensor.shape[1:], mode="nearest-exact")
                    label = label[0, 0].long()
                labels.append(label)
            data["labels"] = torch.stack(labels)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_same_size(tensors: list[torch.Tensor], what: str) -> None:
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(
                f"All {what} of a batch must have the same size after preprocessing, got sizes {sorted(sizes)}. "
                "Process them one at a time, or pass `do_resize=True` with a fixed `size`."
            )

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Iterable[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Label maps from model outputs: logits are resized (bilinear) to each target size, then arg-maxed.

        Args:
            outputs: a `SemanticSegmenterOutput` (or anything with `.logits` [B, C, h, w]).
            target_sizes: one `(height, width)` per image, usually the original image sizes. `None` keeps the
                logits' resolution (stride 8).

        Returns:
            A list of `[height, width]` int64 tensors, one per image.
        """
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        target_sizes = [tuple(int(v) for v in size) for size in target_sizes]
        if len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits.")
        results = []
        for logit, size in zip(logits, target_sizes):
            resized = F.interpolate(logit[None], size=size, mode="bilinear", align_corners=False)
            results.append(resized[0].argmax(dim=0))
        return results


__all__ = ["FastFCNImageProcessor"]
