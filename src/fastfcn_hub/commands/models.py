"""`fastfcn-hub models`: the variant table."""

from __future__ import annotations

import argparse
import json

from ..variants import VARIANTS, list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*jpu_psp*'")
    parser.add_argument("--released", action="store_true", help="only variants with converted mmsegmentation weights")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    names = set(list_models(args.pattern, released=True if args.released else None))
    rows = [v for v in VARIANTS if v.name in names]
    if args.json:
        print(json.dumps([{"name": v.name, "description": v.description, "hub_repo_id": v.hub_repo_id,
                           "miou": v.miou, "miou_ms_flip": v.miou_ms_flip} for v in rows], indent=2))  # fmt: skip
        return 0
    header = f"{'name':<40} {'description':<48} {'mIoU':>6} {'ms+flip':>7}  hub repo"
    print(header)
    print("-" * len(header))
    for v in rows:
        miou = f"{v.miou:.2f}" if v.miou is not None else "-"
        ms = f"{v.miou_ms_flip:.2f}" if v.miou_ms_flip is not None else "-"
        print(f"{v.name:<40} {v.description:<48} {miou:>6} {ms:>7}  {v.hub_repo_id or '-'}")
    print(f"\n{len(rows)} variants")
    return 0
