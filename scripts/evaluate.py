"""Thin wrapper: `python scripts/evaluate.py ...` is `fastfcn-hub evaluate ...` (see `fastfcn-hub evaluate --help`)."""

import sys
from pathlib import Path

# This file's name would shadow the `evaluate` package for everything imported below: drop its folder from the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

from fastfcn_hub.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
