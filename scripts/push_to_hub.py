"""Convert an mmsegmentation checkpoint and push it to the hub: the same as `fastfcn-hub push` (see `--help`)."""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
