"""Thin wrapper: `python scripts/evaluate.py ...` is `fastfcn-hub evaluate ...` (see `fastfcn-hub evaluate --help`)."""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
