"""Write a synthetic Cityscapes (official folder layout, labelIds PNGs) for tests, demos and smoke runs.

python scripts/make_synthetic_cityscapes.py data/synthetic_cityscapes --num-train 64 --num-val 16 --size 128 256
"""

import argparse
import sys

from fastfcn_hub.data import make_synthetic_cityscapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder (gets leftImg8bit/ and gtFine/)")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_synthetic_cityscapes(args.root, num_train=args.num_train, num_val=args.num_val,
                                     num_test=args.num_test, size=tuple(args.size), seed=args.seed)  # fmt: skip
    print(f"wrote a synthetic Cityscapes to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
