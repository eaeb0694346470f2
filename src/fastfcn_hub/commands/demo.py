"""`fastfcn-hub demo`: the whole workflow, offline, in a few minutes on a CPU.

1. generate a synthetic Cityscapes (official folder layout, labelIds PNGs);
2. train a light variant with the transformers Trainer (mmseg's pipeline and SGD + PolyLR, scaled down);
3. evaluate on the validation split (streaming mean IoU);
4. `save_pretrained`, then reload through `AutoModelForSemanticSegmentation`;
5. run `pipeline("image-segmentation")` on a validation image and write a colour overlay with a legend;
6. print the per-class IoU table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", default="fastfcn_r18_jpu_psp", help="a light named variant (default: %(default)s)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where results are written")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default: %(default)s)")
    parser.add_argument("--time-budget", type=float, default=210.0,
                        help="stop training after this many seconds (default: %(default)s)")  # fmt: skip
    parser.add_argument("--num-train", type=int, default=48)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("HEIGHT", "WIDTH"),
                        help="image size (default: 64 128)")  # fmt: skip
    parser.add_argument("--learning-rate", type=float, default=0.05,
                        help="mmseg's 0.01 suits 80k steps; minutes need more (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)


def _time_budget_callback(seconds: float) -> Any:
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stop training once the budget is spent, so the demo stays short on slow or busy machines."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.start > seconds:
                print(f"\ntime budget of {seconds:.0f} s reached at step {state.global_step}; stopping training")
                control.should_training_stop = True
            return control

    return TimeBudget()


def _iou_table(metrics: dict[str, float], id2label: dict[int, str]) -> str:
    rows = [f"{'class':<15} {'IoU':>7} {'accuracy':>9}", "-" * 33]
    for index in sorted(id2label):
        name = id2label[index]
        iou, accuracy = metrics.get(f"eval_iou_{name}", math.nan), metrics.get(f"eval_accuracy_{name}", math.nan)
        if math.isnan(iou) and math.isnan(accuracy):
            continue  # neither predicted nor present
        rows.append(f"{name:<15} {100 * iou:>6.1f}% {100 * accuracy:>8.1f}%")
    rows.append("-" * 33)
    rows.append(f"{'mean IoU':<15} {100 * metrics['eval_mean_iou']:>6.1f}%")
    rows.append(f"{'pixel accuracy':<15} {100 * metrics['eval_overall_accuracy']:>6.1f}%")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from transformers import AutoModelForSemanticSegmentation, pipeline

    from ..data import load_cityscapes, make_synthetic_cityscapes
    from ..training import DataArguments, FastFCNTrainingArguments, ModelArguments, build_trainer
    from ..visualize import overlay

    started = time.monotonic()
    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    height, width = args.size

    # 1. Data in Cityscapes' layout, read back by the real loader.
    data_root = output_dir / "data"
    make_synthetic_cityscapes(data_root, num_train=args.num_train, num_val=args.num_val, size=(height, width),
                              seed=args.seed)  # fmt: skip
    print(f"[1/6] synthetic Cityscapes in {data_root}: {args.num_train} train and {args.num_val} val images, "
          f"{width}x{height}")  # fmt: skip

    # 2. Train: mmseg's pipeline scaled to these images (random rescale x0.75-1.5 rather than x0.5-2 to learn
    # faster, cat_max_ratio crop, flip, photometric distortion), SGD with momentum and the poly schedule.
    model_args = ModelArguments(model_name_or_path=args.variant)
    data_args = DataArguments(
        dataset=str(data_root), scale=[width, height], ratio_range=[0.75, 1.5], crop_size=[height, width],
        eval_scale=None,
    )  # fmt: skip
    training_args = FastFCNTrainingArguments(
        output_dir=str(output_dir / "run"), max_steps=args.steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, eval_strategy="no", save_strategy="no",
        logging_steps=10, dataloader_num_workers=0, seed=args.seed, report_to="none",
    )  # fmt: skip
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.add_callback(_time_budget_callback(args.time_budget))
    print(f"[2/6] training {args.variant} for up to {args.steps} steps (batch 4, lr {args.learning_rate}, poly decay)")
    trainer.train()

    # 3. Evaluate on the whole validation split.
    metrics = trainer.evaluate()
    print(f"[3/6] validation mean IoU {100 * metrics['eval_mean_iou']:.1f}%, "
          f"pixel accuracy {100 * metrics['eval_overall_accuracy']:.1f}%")  # fmt: skip

    # 4. Save and reload through the Auto classes.
    model_dir = output_dir / "model"
    trainer.save_model(str(model_dir))
    (model_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    model = trainer.model.eval()
    probe = torch.randn(1, 3, height, width)
    with torch.no_grad():
        same = torch.equal(reloaded(probe).logits, model(probe).logits)
    print(f"[4/6] saved to {model_dir}; reloaded with AutoModelForSemanticSegmentation "
          f"({type(reloaded).__name__}), logits identical: {same}")  # fmt: skip
    if not same:
        return 1

    # 5. The image-segmentation pipeline on a validation image, and a colour overlay with a legend.
    row = load_cityscapes(data_root, "val")[0]
    segmenter = pipeline("image-segmentation", model=str(model_dir), trust_remote_code=False)
    segments = segmenter(row["image"], subtask="semantic")
    label_map = np.full(row["image"].size[::-1], 255, dtype=np.uint8)
    label2id = reloaded.config.label2id
    for segment in segments:
        label_map[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
    truth = np.asarray(row["label"])
    picture = overlay(row["image"], label_map, reloaded.config.id2label)
    reference = overlay(row["image"], truth, reloaded.config.id2label)
    canvas = Image.new("RGB", (picture.width, picture.height + reference.height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(reference, (0, picture.height))
    overlay_path = output_dir / "segmentation.png"
    canvas.resize((canvas.width * 3, canvas.height * 3), Image.NEAREST).save(overlay_path)
    valid = truth != 255
    agreement = float((label_map[valid] == truth[valid]).mean()) if valid.any() else math.nan
    print(
        f"[5/6] pipeline('image-segmentation') found {len(segments)} classes on a validation image "
        f"({100 * agreement:.1f}% pixels correct); overlay (top: prediction, bottom: ground truth) -> {overlay_path}"
    )

    # 6. The per-class IoU table.
    print("[6/6] per-class IoU on the validation split:\n" + _iou_table(metrics, reloaded.config.id2label))
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0
