"""`fastfcn-hub demo`: the offline end-to-end job on an embedded default (no downloads).

Builds a light named variant, segments a generated street-like image, saves the model with `save_pretrained`,
reloads it through `AutoModelForSemanticSegmentation`, checks the reload reproduces the logits exactly, and writes
the coloured result with a legend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", default="fastfcn_r18_jpu_psp", help="a light named variant (default: %(default)s)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where results are written")
    parser.add_argument("--seed", type=int, default=0)


def generated_street_image(height: int = 256, width: int = 512, seed: int = 0) -> Image.Image:
    """A simple street-like picture: sky, buildings, a road with lane marks, noise. Deterministic per seed."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.float32)
    horizon = height // 2
    image[:horizon] = (70, 130, 180)  # sky
    x = 0
    while x < width:  # buildings of random widths and heights
        w, h = rng.integers(30, 90), rng.integers(horizon // 3, horizon)
        image[horizon - h : horizon, x : x + w] = rng.integers(50, 120, size=3)
        x += w
    image[horizon:] = (128, 64, 128)  # road
    image[horizon + (height - horizon) // 2 : horizon + (height - horizon) // 2 + 4, ::40] = 255  # lane marks
    image += rng.normal(0, 8, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSemanticSegmentation

    from .. import FastFCNImageProcessor, create_model
    from ..visualize import overlay

    torch.manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model = create_model(args.variant).eval()
    processor = FastFCNImageProcessor.from_config(model.config)
    image = generated_street_image(seed=args.seed)
    image.save(args.output_dir / "input.png")

    inputs = processor(image)
    with torch.no_grad():
        outputs = model(**inputs)
    print(f"{args.variant}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"input {tuple(inputs['pixel_values'].shape)} -> logits {tuple(outputs.logits.shape)}")  # fmt: skip

    model_dir = args.output_dir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    with torch.no_grad():
        same = torch.equal(reloaded(**inputs).logits, outputs.logits)
    print(f"saved to {model_dir} and reloaded with AutoModelForSemanticSegmentation: logits identical = {same}")
    if not same:
        return 1

    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    overlay(image, label_map, model.config.id2label).save(args.output_dir / "segmentation.png")
    print(f"wrote {args.output_dir / 'segmentation.png'} (random weights: the classes are arbitrary)")
    return 0
