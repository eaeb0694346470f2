"""Thin wrapper: `python scripts/predict.py ...` is `fastfcn-hub predict ...` (see `fastfcn-hub predict --help`)."""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
