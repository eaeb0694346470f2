"""`fastfcn-hub benchmark`: speed and memory beside the D8 baselines and mmsegmentation; a table and a JSON file."""

from __future__ import annotations

import argparse

from ..benchmark import DEFAULT_IMPLEMENTATIONS, DEFAULT_VARIANTS, IMPLEMENTATIONS, PRECISIONS, BenchmarkSettings
from . import image_size


def _csv(choices: tuple[str, ...] | None = None):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(value.strip() for value in text.split(",") if value.strip())
        unknown = [value for value in values if choices is not None and value not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variants",
        type=_csv(),
        default=DEFAULT_VARIANTS,
        help="comma-separated variant names (default: the three R-50 JPU models)",
    )
    parser.add_argument(
        "--sizes",
        type=lambda t: tuple(image_size(s) for s in t.split(",")),
        default=((512, 1024), (1024, 2048)),
        help="comma-separated HxW (default: 512x1024,1024x2048)",
    )
    parser.add_argument(
        "--implementations",
        type=_csv(IMPLEMENTATIONS),
        default=DEFAULT_IMPLEMENTATIONS,
        help="any of mmseg,plain,optimized,compiled (default: the first three; mmseg is skipped when not installed)",
    )
    parser.add_argument(
        "--precisions",
        type=_csv(tuple(PRECISIONS)),
        default=("fp32",),
        help="fp32,bf16,fp16 (autocast; mmseg runs fp32 only)",
    )
    parser.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="do not run the D8 baseline of each JPU model"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported (default 3)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    parser.add_argument("--train", action="store_true", help="also time one training step, ours and mmseg's")
    parser.add_argument("--no-inference", dest="inference", action="store_false", help="skip the inference rows")
    parser.add_argument("--train-size", type=image_size, default=(512, 1024), help="training crop (default 512x1024)")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument("--train-repeats", type=int, default=1, help="timed training steps (default 1)")
    parser.add_argument(
        "--profile", action="store_true", help="also time each submodule (two levels deep) at the first size"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--default-malloc",
        dest="reuse_freed_memory",
        action="store_false",
        help="keep glibc's default malloc, which returns large freed blocks to the OS (by default the process "
        "first calls fastfcn_hub.optimize.reuse_freed_cpu_memory(), for every implementation alike)",
    )
    parser.add_argument("--output", default="benchmarks/results/benchmark.json", help="where to write the JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import format_table, run_benchmark, save_result

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        variants=args.variants,
        sizes=args.sizes,
        implementations=args.implementations,
        precisions=args.precisions,
        baselines=args.baselines,
        warmup=args.warmup,
        repeats=args.repeats,
        memory=args.memory,
        inference=args.inference,
        train=args.train,
        train_size=args.train_size,
        train_batch=args.train_batch,
        train_repeats=args.train_repeats,
        profile=args.profile,
        device=args.device,
        reuse_freed_memory=args.reuse_freed_memory,
    )
    result = run_benchmark(settings)
    print()
    print(format_table(result))
    print(f"\nJSON written to {save_result(result, args.output)}")
    return 0
