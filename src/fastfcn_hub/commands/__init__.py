"""Implementations of the `fastfcn-hub` subcommands (see `fastfcn_hub.cli.COMMANDS`)."""

from __future__ import annotations

import argparse


def image_size(text: str) -> tuple[int, int]:
    """argparse type for `HEIGHTxWIDTH` (e.g. `1024x2048`)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"sizes are HEIGHTxWIDTH, e.g. 1024x2048; got {text!r}") from error
    return height, width
