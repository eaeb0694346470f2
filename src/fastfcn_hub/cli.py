"""The `fastfcn-hub` command line: one subcommand per job, each implemented in `fastfcn_hub.commands.<name>`.

Every command module has `add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
command runs, so `fastfcn-hub --help` stays fast. Commands raise `ValueError` / `OSError` with an actionable message
for bad input (a wrong folder, a checkpoint of another architecture); `main` prints it without a traceback and exits
with status 2. Set `FASTFCN_HUB_TRACEBACK=1` to see the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> one-line help. The implementation lives in fastfcn_hub/commands/<name>.py.
COMMANDS: dict[str, str] = {
    "models": "list the named variants (with released weights, hub repo ids and reported mIoU)",
    "demo": "the offline end-to-end demo on an embedded default (no downloads)",
    "convert": "convert an mmsegmentation checkpoint into a transformers model directory",
    "push": "convert a checkpoint and push weights, processor and model card to the hub",
    "train": "train or fine-tune on Cityscapes with the transformers Trainer",
    "evaluate": "score a model on a dataset (mIoU, per-class IoU and accuracy)",
    "predict": "segment images, folders or globs into label PNGs and colour overlays",
    "benchmark": "parameters, GFLOPs, latency and memory, beside mmsegmentation when installed",
    "export": "export whole-image inference at a fixed size to ONNX (checked in onnxruntime) or torch.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastfcn-hub",
        description="FastFCN (Joint Pyramid Upsampling) semantic segmentation for Hugging Face and timm.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / errors for unknown commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"fastfcn_hub.commands.{name}")
    command_parser = argparse.ArgumentParser(prog=f"fastfcn-hub {name}", description=COMMANDS[name])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as error:  # bad input: the message says what to do
        if os.environ.get("FASTFCN_HUB_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
