"""Export whole-image inference (logits at the input size) to ONNX and to `torch.export`, at a fixed input size.

PSP head and ONNX: `AdaptiveAvgPool2d(s)` has an ONNX form (AveragePool) only when the pooled map's side is a
multiple of `s`. The PSP head pools the stride-8 map into 1, 2, 3 and 6 bins, so the input's height and width must be
multiples of 8 x lcm(pool_scales) = 48 (e.g. 1008x2016, not 1024x2048). `check_export_size` enforces this with the
nearest valid sizes; `exact_pooling=True` lifts it by replacing each adaptive pooling with two fixed averaging matrices
for the exported size (the same bins, so the same values). `torch.export` has no such constraint.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modeling_fastfcn import FastFCNForSemanticSegmentation, FastFCNPyramidPoolingHead


class WholeImageSegmenter(nn.Module):
    """`pixel_values [B, 3, H, W] -> logits [B, num_labels, H, W]`: the model plus the bilinear resize to the input."""

    def __init__(self, model: FastFCNForSemanticSegmentation) -> None:
        super().__init__()
        self.model = model
        self.align_corners = model.config.align_corners

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values, return_dict=True).logits
        return F.interpolate(logits, size=pixel_values.shape[2:], mode="bilinear", align_corners=self.align_corners)


def adaptive_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """[bins, size] matrix of adaptive average pooling along one axis: bin i is [floor(i*n/b), ceil((i+1)*n/b))."""
    matrix = torch.zeros(bins, size)
    for index in range(bins):
        start, end = (index * size) // bins, -((-(index + 1) * size) // bins)
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


class FixedSizeAdaptiveAvgPool2d(nn.Module):
    """`AdaptiveAvgPool2d(bins)` for one input size, as `P_h @ x @ P_w^T`: exportable for any size."""

    def __init__(self, bins: int, height: int, width: int) -> None:
        super().__init__()
        self.bins, self.height, self.width = bins, height, width
        self.register_buffer("rows", adaptive_pool_matrix(height, bins), persistent=False)
        self.register_buffer("columns", adaptive_pool_matrix(width, bins), persistent=False)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        if tuple(hidden_state.shape[2:]) != (self.height, self.width):
            raise ValueError(
                f"This pooling was fixed for {self.height}x{self.width} maps, got {tuple(hidden_state.shape[2:])}."
            )
        return self.rows @ hidden_state @ self.columns.T


def _feature_size(model: FastFCNForSemanticSegmentation, height: int, width: int) -> tuple[int, int]:
    """Height and width of the map the decode head sees, from a meta-device pass (free)."""
    sizes = []
    meta_model = copy.deepcopy(model).to("meta").eval()
    hook = meta_model.decode_head.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[2:])))
    with torch.no_grad():
        meta_model(torch.empty(1, model.config.num_channels, height, width, device="meta"))
    hook.remove()
    return sizes[0]


def check_export_size(model: FastFCNForSemanticSegmentation, height: int, width: int) -> None:
    """Raise a ValueError naming valid sizes when the PSP head's pooling has no ONNX form at `height x width`."""
    if model.config.decode_head != "psp":
        return
    feature_height, feature_width = _feature_size(model, height, width)
    scales = tuple(model.config.pool_scales)
    if all(feature_height % s == 0 and feature_width % s == 0 for s in scales):
        return
    step = model.config.output_stride * math.lcm(*scales)

    def around(value: int) -> str:
        lower, upper = max(step, value // step * step), -(-value // step) * step
        return f"{lower} or {upper}" if lower != upper else str(lower)

    raise ValueError(
        f"Cannot export the PSP head to ONNX at {height}x{width}: its stride-8 map is {feature_height}x"
        f"{feature_width}, which adaptive average pooling into {scales} bins cannot split evenly (ONNX has no "
        f"uneven adaptive pooling). Use a height and width that are multiples of {step} (height {around(height)}, "
        f"width {around(width)}), or pass `exact_pooling=True` (`--exact-pooling` on the command line) to export "
        "fixed averaging matrices for this size."
    )


def _with_exact_pooling(model: FastFCNForSemanticSegmentation, height: int, width: int) -> nn.Module:
    model = copy.deepcopy(model)
    if isinstance(model.decode_head, FastFCNPyramidPoolingHead):
        feature_height, feature_width = _feature_size(model, height, width)
        for stage in model.decode_head.psp_modules:
            bins = stage[0].output_size
            bins = bins if isinstance(bins, int) else bins[0]
            stage[0] = FixedSizeAdaptiveAvgPool2d(bins, feature_height, feature_width)
    return model


def export_onnx(
    model: FastFCNForSemanticSegmentation,
    path: str | Path,
    height: int,
    width: int,
    batch_size: int = 1,
    exact_pooling: bool = False,
    opset_version: int = 17,
) -> Path:
    """Write whole-image inference at `batch_size x 3 x height x width` to an ONNX file (input `pixel_values`,
    output `logits` at the input size). Uses the TorchScript-based exporter (no `onnxscript` needed)."""
    if not exact_pooling:
        check_export_size(model, height, width)
    module = _with_exact_pooling(model, height, width) if exact_pooling else copy.deepcopy(model)
    wrapper = WholeImageSegmenter(module).eval()
    example = torch.zeros(batch_size, model.config.num_channels, height, width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes (fixed here)
        torch.onnx.export(wrapper, (example,), str(path), input_names=["pixel_values"], output_names=["logits"],
                          opset_version=opset_version, dynamo=False)  # fmt: skip
    return path


def onnx_max_abs_diff(path: str | Path, model: FastFCNForSemanticSegmentation, pixel_values: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch| over the whole-image logits of `pixel_values` (the export's check)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        torch_logits = WholeImageSegmenter(model).eval()(pixel_values).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def export_program(
    model: FastFCNForSemanticSegmentation, height: int, width: int, batch_size: int = 1
) -> torch.export.ExportedProgram:
    """`torch.export` of whole-image inference at a fixed size (save with `torch.export.save`)."""
    example = torch.zeros(batch_size, model.config.num_channels, height, width)
    return torch.export.export(WholeImageSegmenter(model).eval(), (example,))


__all__ = [
    "FixedSizeAdaptiveAvgPool2d",
    "WholeImageSegmenter",
    "adaptive_pool_matrix",
    "check_export_size",
    "export_onnx",
    "export_program",
    "onnx_max_abs_diff",
]
