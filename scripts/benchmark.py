"""Benchmark FastFCN beside its D8 baselines and mmsegmentation (same as `fastfcn-hub benchmark`; see --help).

python scripts/benchmark.py --sizes 1024x2048 --repeats 3 --output benchmarks/results/cpu.json
"""

import sys

from fastfcn_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
