"""Mean IoU throughput: fastfcn_hub's streaming confusion matrix against evaluate's `Metric` path, 1024x2048 maps.

    python scripts/benchmark_metric.py [--maps 8] [--repeats 3] [--kind random|blocky] [--output PATH]

Rows (best of `--repeats`, all on the CPU unless `--device cuda`):
- `MeanIoU (torch)`: `fastfcn_hub.metrics.MeanIoU.add_batch` + `compute` on int64 tensors.
- `MeanIoU (numpy uint8)`: the same from uint8 numpy maps, as read from PNG label files.
- `evaluate Metric path`: `evaluate.load(<in-package module>).compute(...)`: the `datasets.Image()` features of
  evaluate's `mean_iou` (PNG encoding, Arrow, decoding) with our arithmetic. No network is needed.
- `per-image histograms`: evaluate's `_compute` algorithm (mask, three histograms per image), re-implemented here.
- `evaluate.load("mean_iou")`: the hub script itself, only when it can be loaded (online or cached).
Every row must give the same mIoU. Prints a table with the ratio to `MeanIoU (torch)` and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fastfcn_hub.metrics import EVALUATE_MODULE_PATH, MeanIoU

NUM_LABELS, IGNORE_INDEX = 19, 255


def make_maps(count: int, kind: str, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """uint8 prediction / reference maps of 1024x2048 with 5% ignored reference pixels.

    `random` is uniform noise (the worst case for PNG encoding); `blocky` is 32x32 blocks with 10% of the prediction
    blocks wrong, closer to real masks.
    """
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for _ in range(count):
        if kind == "random":
            reference = rng.integers(0, NUM_LABELS, size=(1024, 2048), dtype=np.uint8)
            prediction = rng.integers(0, NUM_LABELS, size=(1024, 2048), dtype=np.uint8)
        else:
            blocks = rng.integers(0, NUM_LABELS, size=(32, 64), dtype=np.uint8)
            wrong = np.where(rng.random(blocks.shape) < 0.1, rng.integers(0, NUM_LABELS, size=blocks.shape), blocks)
            reference = np.kron(blocks, np.ones((32, 32), dtype=np.uint8))
            prediction = np.kron(wrong.astype(np.uint8), np.ones((32, 32), dtype=np.uint8))
        reference[rng.random(reference.shape) < 0.05] = IGNORE_INDEX
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


def histogram_mean_iou(predictions: list[np.ndarray], references: list[np.ndarray]) -> float:
    """evaluate's `_compute` algorithm, one image at a time (our own writing of it)."""
    intersect, area_prediction, area_label = (np.zeros(NUM_LABELS) for _ in range(3))
    bins = {"bins": NUM_LABELS, "range": (0, NUM_LABELS - 1)}
    for prediction, reference in zip(predictions, references):
        keep = reference != IGNORE_INDEX
        prediction, reference = prediction[keep], reference[keep]
        intersect += np.histogram(prediction[prediction == reference], **bins)[0]
        area_prediction += np.histogram(prediction, **bins)[0]
        area_label += np.histogram(reference, **bins)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(intersect / (area_prediction + area_label - intersect)))


def best_time(function: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(best seconds, the function's mIoU)."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=8, help="number of 1024x2048 maps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", choices=("random", "blocky"), default="random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/metric.json"))
    args = parser.parse_args()

    # This folder holds `evaluate.py` (the CLI wrapper), which would shadow the evaluate package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    import evaluate

    predictions, references = make_maps(args.maps, args.kind)
    device = torch.device(args.device)
    prediction_tensors = [torch.from_numpy(p).long().to(device) for p in predictions]
    reference_tensors = [torch.from_numpy(r).long().to(device) for r in references]

    def ours_torch() -> float:
        metric = MeanIoU(NUM_LABELS, IGNORE_INDEX)
        for prediction, reference in zip(prediction_tensors, reference_tensors):
            metric.add_batch(prediction, reference)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(metric.compute()["mean_iou"])

    def ours_numpy() -> float:
        metric = MeanIoU(NUM_LABELS, IGNORE_INDEX)
        metric.add_batch(predictions, references)
        return float(metric.compute()["mean_iou"])

    module = evaluate.load(EVALUATE_MODULE_PATH, keep_in_memory=True)

    def evaluate_metric_path() -> float:
        results = module.compute(predictions=predictions, references=references, num_labels=NUM_LABELS,
                                 ignore_index=IGNORE_INDEX)  # fmt: skip
        return float(results["mean_iou"])

    rows = [("MeanIoU (torch)", ours_torch), ("MeanIoU (numpy uint8)", ours_numpy),
            ("evaluate Metric path", evaluate_metric_path),
            ("per-image histograms", lambda: histogram_mean_iou(predictions, references))]  # fmt: skip
    try:
        hub_module = evaluate.load("mean_iou", keep_in_memory=True)
        rows.append(("evaluate.load('mean_iou')", lambda: float(hub_module.compute(
            predictions=predictions, references=references, num_labels=NUM_LABELS, ignore_index=IGNORE_INDEX,
        )["mean_iou"])))  # fmt: skip
    except Exception as error:  # offline: the hub script cannot be fetched
        print(f"(skipping evaluate.load('mean_iou'): {type(error).__name__})")

    measured = []
    for name, function in rows:
        function()  # warm-up
        seconds, value = best_time(function, args.repeats)
        measured.append({"name": name, "seconds": seconds, "mean_iou": value})
    baseline = measured[0]["seconds"]
    megapixels = args.maps * 1024 * 2048 / 1e6
    print(f"\nmean IoU of {args.maps} maps of 1024x2048 ({args.kind}), {NUM_LABELS} classes, best of {args.repeats}")
    print(f"{'method':<28} {'seconds':>8} {'Mpx/s':>8} {'x slower':>9} {'mIoU':>10}")
    for row in measured:
        row["megapixels_per_second"] = megapixels / row["seconds"]
        row["ratio_to_ours"] = row["seconds"] / baseline
        print(f"{row['name']:<28} {row['seconds']:>8.3f} {row['megapixels_per_second']:>8.1f} "
              f"{row['ratio_to_ours']:>9.2f} {row['mean_iou']:>10.6f}")  # fmt: skip
    values = [row["mean_iou"] for row in measured]
    if max(values) - min(values) > 1e-12:
        raise SystemExit(f"The methods disagree on the mIoU: {values}")
    evaluate_row = next(row for row in measured if row["name"] == "evaluate Metric path")
    print(f"\nMeanIoU is {evaluate_row['ratio_to_ours']:.1f}x faster than evaluate's Metric path (same mIoU).")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "maps": args.maps, "size": [1024, 2048], "kind": args.kind, "num_labels": NUM_LABELS,
        "repeats": args.repeats, "device": str(device), "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
        "torch": torch.__version__, "evaluate": evaluate.__version__, "rows": measured,
        "speedup_vs_evaluate_metric_path": evaluate_row["ratio_to_ours"],
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
