"""`fastfcn-hub evaluate`: a model on a dataset in one inference mode -> mIoU, per-class IoU / accuracy, JSON.

    fastfcn-hub evaluate --model fastfcn_r50_jpu_psp.cityscapes_4xb2 --dataset /data/cityscapes --split val [--ms-flip]

`--dataset` is a Cityscapes root (official layout), a hub dataset id or parquet file(s) (see
`fastfcn_hub.data.load_segmentation_dataset`), or `synthetic` (a generated Cityscapes-like set, no download). The
table is printed and written, with a JSON of every number, to `--output` (default `outputs/evaluate/<run>.json`).
Scores follow evaluate's `mean_iou` (see `fastfcn_hub.metrics`), computed at each label map's own size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .predict import add_inference_arguments, describe_options, resolve_device, segment_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(parser)
    parser.add_argument(
        "--dataset", required=True, help="a Cityscapes root, a hub dataset id, parquet file(s), or 'synthetic'"
    )
    parser.add_argument("--split", default="val", help="dataset split (default: %(default)s)")
    parser.add_argument(
        "--label-encoding",
        default="auto",
        choices=("auto", "trainIds", "labelIds", "indices"),
        help="how hub / parquet masks are encoded; 'indices' = 0..N-1 class indices (other datasets)",
    )
    parser.add_argument("--image-column", default="image", help="image column of a hub / parquet dataset")
    parser.add_argument("--label-column", default="label", help="label column of a hub / parquet dataset")
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N images")
    parser.add_argument("--synthetic-samples", type=int, default=8, help="images of the synthetic set")
    parser.add_argument(
        "--synthetic-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(128, 256),
        help="size of the synthetic images (default: 128 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (the table is written beside it, .txt)")


def load_dataset(args: argparse.Namespace, num_labels: int, workdir: Path) -> tuple[Any, str, tuple[str, ...] | None]:
    """`(dataset, name, class names or None)`; rows give a PIL `image` and a `label` map."""
    from ..data import load_cityscapes, load_segmentation_dataset
    from ..labels import CITYSCAPES_CLASSES

    if args.dataset == "synthetic":
        from ..data import make_synthetic_cityscapes

        root = make_synthetic_cityscapes(workdir / "synthetic", num_train=0, num_val=args.synthetic_samples,
                                         size=tuple(args.synthetic_size), seed=args.seed)  # fmt: skip
        return load_cityscapes(root, "val"), "synthetic", CITYSCAPES_CLASSES
    path = Path(args.dataset).expanduser()
    if path.is_dir() and (path / "leftImg8bit").is_dir():
        return load_cityscapes(path, args.split), f"cityscapes-{args.split}", CITYSCAPES_CLASSES
    dataset = load_segmentation_dataset(
        args.dataset,
        args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        label_encoding=args.label_encoding,
        num_labels=num_labels if args.label_encoding == "indices" else None,
    )
    name = f"{path.stem if path.exists() else args.dataset.replace('/', '--')}-{args.split}"
    return dataset, name, None if args.label_encoding == "indices" else CITYSCAPES_CLASSES


def check_classes(config: Any, dataset_classes: tuple[str, ...] | None, dataset_name: str) -> None:
    """A model whose classes are not the dataset's is an error (default `LABEL_i` names only need the count)."""
    if dataset_classes is None:
        return
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    same = [name.lower() for name in names] == [name.lower() for name in dataset_classes]
    if len(names) != len(dataset_classes) or not (same or generic):
        raise ValueError(
            f"The model predicts {len(names)} classes ({', '.join(names[:4])}, ...) but {dataset_name} has "
            f"{len(dataset_classes)} ({', '.join(dataset_classes[:4])}, ...). Evaluate a model trained on this "
            "dataset, or pass --label-encoding indices for a dataset of other classes."
        )


def _number(value: float) -> float | None:
    """JSON has no NaN: classes absent from both sides are written as null."""
    return None if np.isnan(value) else float(value)


def format_table(results: dict[str, Any], class_names: list[str], title: str) -> str:
    """mmseg-style table: per-class IoU and accuracy in percent, then the three summary numbers."""
    width = max(12, *(len(name) for name in class_names))
    lines = [title, f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, iou, accuracy in zip(class_names, results["per_category_iou"], results["per_category_accuracy"]):
        lines.append(f"{name:<{width}}  {100 * iou:>6.2f}  {100 * accuracy:>6.2f}")
    lines.append("-" * (width + 16))
    lines.append(f"{'mIoU':<{width}}  {100 * results['mean_iou']:>6.2f}")
    lines.append(f"{'mAcc':<{width}}  {100 * results['mean_accuracy']:>6.2f}")
    lines.append(f"{'aAcc':<{width}}  {100 * results['overall_accuracy']:>6.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..inference import batches_by_size, load_model, predict_label_maps
    from ..metrics import MeanIoU

    options = segment_options(args)
    device = resolve_device(args.device)
    model, processor, model_name = load_model(args.model, random_weights=args.random_weights)
    model.to(device)
    config = model.config
    ignore_index = config.semantic_loss_ignore_index
    with tempfile.TemporaryDirectory(prefix="fastfcn_evaluate_") as workdir:
        dataset, dataset_name, dataset_classes = load_dataset(args, config.num_labels, Path(workdir))
        check_classes(config, dataset_classes, dataset_name)
        total = len(dataset) if args.max_samples is None else min(args.max_samples, len(dataset))
        if total == 0:
            raise ValueError(f"{dataset_name} has no images to evaluate.")
        metric = MeanIoU(config.num_labels, ignore_index=ignore_index, device=device)
        setting = describe_options(options)
        print(f"{model_name} on {dataset_name} ({total} images), {setting}, {device}")

        def rows():
            for index in range(total):
                row = dataset[index]
                image, label = row["image"].convert("RGB"), np.asarray(row["label"])
                if label.shape != (image.height, image.width):
                    raise ValueError(
                        f"Row {index} of {dataset_name}: the label is {label.shape[1]}x{label.shape[0]} but the "
                        f"image (and so the prediction) is {image.width}x{image.height} (width x height)."
                    )
                values = np.unique(label)
                stray = values[(values != ignore_index) & ((values < 0) | (values >= config.num_labels))]
                if stray.size:
                    raise ValueError(
                        f"Row {index} of {dataset_name} has label values {stray.tolist()[:8]} outside the model's "
                        f"{config.num_labels} classes (and {ignore_index} = ignore): the model's labels do not "
                        "match the dataset's."
                    )
                yield image, label

        start = time.perf_counter()
        with tqdm(total=total, desc="evaluate", unit="img") as progress, torch.inference_mode():
            for batch in batches_by_size(rows(), lambda item: item[0].size, args.batch_size):
                predictions = predict_label_maps(model, processor, [image for image, _ in batch], device=device,
                                                 **options)  # fmt: skip
                metric.add_batch(predictions, [label for _, label in batch])
                progress.update(len(batch))
        seconds = time.perf_counter() - start

    results = metric.compute()
    class_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    table = format_table(results, class_names, f"{model_name} | {dataset_name} | {setting} | {total} images")
    print(table)
    run_name = f"{model_name}_{dataset_name}_{setting.replace(' ', '').replace('+', '_')}"
    output = args.output or Path("outputs/evaluate") / f"{run_name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model), "model_name": model_name, "dataset": str(args.dataset), "split": args.split,
        "num_images": total, "setting": setting, **{k: v for k, v in options.items()},
        "mean_iou": _number(results["mean_iou"]), "mean_accuracy": _number(results["mean_accuracy"]),
        "overall_accuracy": _number(results["overall_accuracy"]),
        "per_class": {name: {"iou": _number(iou), "accuracy": _number(acc)} for name, iou, acc in
                      zip(class_names, results["per_category_iou"], results["per_category_accuracy"])},
        "seconds": round(seconds, 3), "device": str(device),
    }  # fmt: skip
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".txt").write_text(table + "\n")
    print(f"wrote {output} and {output.with_suffix('.txt')}")
    return 0
