"""`fastfcn-hub predict`: images, folders or globs -> label PNGs and colour overlays with a legend.

    fastfcn-hub predict photos/ "more/*.jpg" --model fastfcn_r50_jpu_psp.cityscapes_4xb2 --output-dir out
    -> out/labels/<name>.png    label map, one uint8 class index per pixel (trainIds, or Cityscapes labelIds)
       out/overlays/<name>.png  the image with the colour-coded classes blended over it, plus a legend

Names keep the inputs' folder structure below their common folder, so Cityscapes' `leftImg8bit/test` gives
`<city>/<frame>.png` files; `--format labelIds` writes what the Cityscapes benchmark server expects.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and inference-mode options shared by `predict` and `evaluate`."""
    parser.add_argument("--model", required=True, help="a saved model folder, a hub repo id or a variant name")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build a variant with random weights instead of loading its released ones (smoke tests)",
    )
    parser.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default="whole",
        help="whole image (mmseg's test mode for FastFCN) or sliding window (default: %(default)s)",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="sliding window size (needed by --mode slide), e.g. 512 1024",
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="sliding window stride (default: two thirds of the crop)",
    )
    parser.add_argument(
        "--ms-flip",
        action="store_true",
        help="multi-scale (ratios 0.5 .. 1.75) and left-right flip test-time augmentation",
    )
    parser.add_argument("--scales", type=float, nargs="+", default=None, help="own multi-scale ratios")
    parser.add_argument("--flip", action="store_true", help="add left-right flipped passes")
    parser.add_argument(
        "--average",
        choices=("probabilities", "logits"),
        default="probabilities",
        help="what test-time augmentation averages (default: %(default)s, as mmseg)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images)")


def segment_options(args: argparse.Namespace) -> dict[str, Any]:
    """`segment()` keyword arguments from the parsed inference options."""
    from ..inference import DEFAULT_SCALES

    if args.mode == "slide" and args.crop_size is None:
        raise ValueError("--mode slide needs --crop-size H W, e.g. --crop-size 512 1024.")
    scales = args.scales if args.scales is not None else (DEFAULT_SCALES if args.ms_flip else None)
    return {"mode": args.mode, "crop_size": args.crop_size, "stride": args.stride, "scales": scales,
            "flip": args.flip or args.ms_flip, "average": args.average}  # fmt: skip


def describe_options(options: dict[str, Any]) -> str:
    """A short human-readable name for an inference setting, e.g. `slide 512x1024 + ms(6)+flip`."""
    text = options["mode"]
    if options["mode"] == "slide":
        text += " {}x{}".format(*options["crop_size"])
    if options["scales"] is not None:
        text += f" + ms({len(options['scales'])})"
    if options["flip"]:
        text += "+flip" if options["scales"] is not None else " + flip"
    return text


def resolve_device(device: str | None):
    """The `--device` (default: CUDA when available); on the CPU, also `reuse_freed_cpu_memory()` for this process."""
    import torch

    from ..optimize import reuse_freed_cpu_memory

    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available here; use --device cpu.")
    if device.type == "cpu":  # an inference process: keep freed memory, so that each image skips the page faults
        reuse_freed_cpu_memory()
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    add_inference_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/predict"), help="where results are written")
    parser.add_argument(
        "--format",
        choices=("trainIds", "labelIds"),
        default="trainIds",
        help="label PNG values: the model's class indices, or Cityscapes labelIds (benchmark server)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="write label PNGs only")
    parser.add_argument("--alpha", type=float, default=0.55, help="overlay opacity of the colours")


def train_id_to_label_id_table() -> np.ndarray:
    """uint8 lookup from Cityscapes trainIds (0..18) to labelIds; anything else becomes 0 (unlabeled)."""
    from cityscapesscripts.helpers.labels import labels

    table = np.zeros(256, dtype=np.uint8)
    for label in labels:
        if 0 <= label.trainId < 19:
            table[label.trainId] = label.id
    return table


def output_names(paths: list[Path]) -> list[Path]:
    """Each input's path below the inputs' common folder, with a .png suffix; clashing names raise."""
    parents = [str(path.resolve().parent) for path in paths]
    common = Path(os.path.commonpath(parents))
    names = [path.resolve().relative_to(common).with_suffix(".png") for path in paths]
    seen: dict[Path, Path] = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise ValueError(f"{seen[name]} and {path} would both be written as {name}; rename one of them.")
        seen[name] = path
    return names


def _check_cityscapes_model(config: Any) -> None:
    from ..labels import CITYSCAPES_CLASSES

    names = [str(config.id2label[i]).lower() for i in range(config.num_labels)]
    if names != [name.lower() for name in CITYSCAPES_CLASSES]:
        raise ValueError(
            f"--format labelIds maps Cityscapes trainIds to labelIds, but this model predicts {config.num_labels} "
            f"classes ({', '.join(names[:5])}, ...), not Cityscapes' 19. Use --format trainIds."
        )


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..inference import batches_by_size, expand_image_paths, load_image, load_model, predict_label_maps
    from ..visualize import overlay

    options = segment_options(args)
    device = resolve_device(args.device)
    paths = expand_image_paths(args.inputs)
    names = output_names(paths)
    model, processor, model_name = load_model(args.model, random_weights=args.random_weights)
    model.to(device)
    if args.format == "labelIds":
        _check_cityscapes_model(model.config)
    table = train_id_to_label_id_table() if args.format == "labelIds" else None
    id2label = {int(key): value for key, value in model.config.id2label.items()}
    if model.config.num_labels > 256:
        raise ValueError(f"{model.config.num_labels} classes do not fit an 8-bit label PNG.")

    def loaded():
        for path, name in zip(paths, names):
            yield path, name, load_image(path)

    label_dir, overlay_dir = args.output_dir / "labels", args.output_dir / "overlays"
    print(f"{model_name}: {describe_options(options)} on {device}, {len(paths)} images -> {args.output_dir}")
    with tqdm(total=len(paths), desc="predict", unit="img") as progress, torch.inference_mode():
        for batch in batches_by_size(loaded(), lambda item: item[2].size, args.batch_size):
            label_maps = predict_label_maps(model, processor, [item[2] for item in batch], device=device, **options)
            for (_, name, image), label_map in zip(batch, label_maps):
                label_map = label_map.astype(np.uint8)
                (label_dir / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(table[label_map] if table is not None else label_map).save(label_dir / name)
                if not args.no_overlay:
                    (overlay_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    overlay(image, label_map, id2label, alpha=args.alpha).save(overlay_dir / name)
                progress.update(1)
    print(f"wrote {len(paths)} label maps ({args.format}) to {label_dir}"
          + ("" if args.no_overlay else f" and overlays to {overlay_dir}"))  # fmt: skip
    return 0
