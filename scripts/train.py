"""Train FastFCN with the transformers Trainer: `python scripts/train.py --help` (same as `fastfcn-hub train`).

Launch it unchanged on several devices: `torchrun --nproc_per_node 4 scripts/train.py ...` or
`accelerate launch scripts/train.py ...`.
"""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
