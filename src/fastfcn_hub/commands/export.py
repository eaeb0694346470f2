"""`fastfcn-hub export`: whole-image inference at a fixed size to ONNX (checked in onnxruntime) or `torch.export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import image_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved model folder, a hub repo id or a variant name")
    parser.add_argument("--random-weights", action="store_true", help="a variant with random weights (smoke tests)")
    parser.add_argument("--size", type=image_size, required=True, help="the fixed input size HEIGHTxWIDTH")
    parser.add_argument("--batch-size", type=int, default=1, help="the fixed batch size (default 1)")
    parser.add_argument("--output", type=Path, required=True, help="model.onnx, or model.pt2 for torch.export")
    parser.add_argument(
        "--exact-pooling",
        action="store_true",
        help="ONNX of a PSP model at any size: adaptive pooling as fixed averaging matrices (same values)",
    )
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_onnx, export_program, onnx_max_abs_diff
    from ..inference import load_model

    model, _, name = load_model(args.model, random_weights=args.random_weights)
    model.eval()
    height, width = args.size
    suffix = args.output.suffix.lower()
    if suffix not in (".onnx", ".pt2"):
        raise ValueError(f"--output must end in .onnx (ONNX) or .pt2 (torch.export), got {args.output.name!r}")
    if suffix == ".pt2":
        program = export_program(model, height, width, batch_size=args.batch_size)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, args.output)
        print(f"{name}: torch.export program for {args.batch_size}x3x{height}x{width} -> {args.output}")
        return 0
    path = export_onnx(model, args.output, height, width, batch_size=args.batch_size, exact_pooling=args.exact_pooling)
    print(f"{name}: ONNX for {args.batch_size}x3x{height}x{width} (input pixel_values, output logits) -> {path}")
    if args.check:
        pixel_values = torch.randn(args.batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
        difference = onnx_max_abs_diff(path, model, pixel_values)
        print(f"onnxruntime vs PyTorch: max |logit difference| {difference:.1e}")
        if difference > 1e-4:
            print("warning: the exported model differs from PyTorch by more than 1e-4")
            return 1
    return 0
