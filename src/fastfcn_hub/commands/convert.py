"""`fastfcn-hub convert`: an mmsegmentation checkpoint -> a transformers model directory (`fastfcn_hub.conversion`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="mmsegmentation .pth file, or its URL (downloaded once when online)")
    parser.add_argument("output_dir", type=Path, help="directory to create (config, weights, processor, card)")
    add_selection_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists and is not empty")


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `fastfcn-hub push`: which variant the checkpoint is, and what to keep."""
    parser.add_argument(
        "--mmseg-config",
        metavar="NAME",
        help="mmsegmentation 1.x config name, e.g. fastfcn_r50-d32_jpu_aspp_4xb2-80k_cityscapes-512x1024 "
        "(default: inferred from the file name and the state dict)",
    )
    parser.add_argument("--variant", metavar="NAME", help="fastfcn-hub variant name (see `fastfcn-hub models`)")
    parser.add_argument(
        "--drop-training-heads",
        action="store_true",
        help="drop the auxiliary head and the EncNet SE layer (inference-only weights)",
    )


def run(args: argparse.Namespace) -> int:
    from ..conversion import convert_checkpoint

    result = convert_checkpoint(  # a ConversionError (ValueError) is reported by the CLI
        args.checkpoint,
        args.output_dir,
        mmseg_config=args.mmseg_config,
        variant=args.variant,
        drop_training_heads=args.drop_training_heads,
        overwrite=args.overwrite,
    )
    output_dir, variant = result.output_dir, result.variant
    files = ", ".join(sorted(path.name for path in output_dir.iterdir()))
    if result.hash_matches_name is False:
        print("note: the file's sha256 does not start with the hash in its name: it is not the file mmsegmentation "
              "released under that name (fine for your own checkpoints).", file=sys.stderr)  # fmt: skip
    print(f"converted {Path(str(args.checkpoint)).name} as {variant.name} -> {output_dir}\n  files: {files}")
    return 0
