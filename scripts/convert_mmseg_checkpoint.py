"""Convert an mmsegmentation checkpoint: the same as `fastfcn-hub convert` (see `--help`)."""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
