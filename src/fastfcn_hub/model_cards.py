"""Model cards for the converted checkpoints, generated from the variant table (never edited by hand).

Every number in a card comes from `variants.VARIANTS` (which names its source) or is computed from the model
itself (parameter counts). `python scripts/make_model_cards.py` writes `MODEL_CARDS/<variant>.md`;
`--check` fails when a committed card differs from what the table generates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .variants import VARIANTS, Variant, get_variant

MMSEG_REPO = "https://github.com/open-mmlab/mmsegmentation"
MMSEG_CONFIGS = f"{MMSEG_REPO}/blob/v1.2.2/configs"
DATASET_NAMES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}
DATASET_IDS = {"cityscapes": "cityscapes", "ade20k": "scene_parse_150"}
DEFAULT_OUTPUT = Path("MODEL_CARDS")
# Rows whose numbers the project's reference table got wrong; the card says where the right ones come from.
REFERENCE_TABLE_NOTES = {
    "fastfcn_r50_jpu_aspp.cityscapes_4xb2": (
        "The project's reference table has placeholder values for this row; the numbers above are "
        "mmsegmentation's metafile entry for this checkpoint."
    ),
}

_BACKBONES = {
    "d32_mmseg": "ResNet-50-D32: ResNetV1c (timm `resnet50c`, deep 32-32-64 stem), output stride 32, with "
    "mmsegmentation's contracted dilations (1, 1, 2, 4) in the strided stages",
    "d8": "ResNet-50-D8: ResNetV1c (timm `resnet50c`), output stride 8 (stages 3 and 4 dilated 2 and 4, not strided)",
}
_HEADS = {
    "aspp": "DeepLabV3 ASPP head (image pooling + 1x1 and 3x3 convolutions dilated 12, 24, 36; 512 channels)",
    "psp": "PSPNet pyramid pooling head (bins 1, 2, 3, 6; 512 channels)",
    "enc": "EncNet context encoding head (32 codewords, 512 channels) with the semantic-encoding (SE) branch",
}

USAGE_TEMPLATE = """import torch
from PIL import Image

from fastfcn_hub import FastFCN, FastFCNImageProcessor

repo_id = "{repo_id}"
model = FastFCN.from_pretrained(repo_id).eval()
processor = FastFCNImageProcessor.from_pretrained(repo_id)

image = Image.new("RGB", (256, 128), (128, 64, 128))  # or Image.open("street.png").convert("RGB")
inputs = processor(image)
with torch.no_grad():
    outputs = model(**inputs)  # logits at stride 8: [1, num_labels, H/8, W/8]
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print(label_map.shape, model.config.id2label[int(label_map[0, 0])])"""

PIPELINE_TEMPLATE = """from transformers import pipeline

import fastfcn_hub  # noqa: F401  (registers FastFCN with transformers' Auto classes)

segmenter = pipeline("image-segmentation", model="{repo_id}")
masks = segmenter("street.png")  # one {{"label", "mask"}} per class present"""


def usage_snippet(variant: Variant, repo_id: str | None = None) -> str:
    """Python code that loads the converted model and segments an image (executed by the tests)."""
    return USAGE_TEMPLATE.format(repo_id=repo_id or variant.hub_repo_id)


def _parameter_counts(config: Any) -> tuple[float, float]:
    """Millions of parameters: at inference (no auxiliary head / SE layer) and in total. Built on the meta device."""
    import torch

    from .modeling_fastfcn import FastFCNForSemanticSegmentation

    with torch.device("meta"):
        model = FastFCNForSemanticSegmentation(config)
    total = sum(p.numel() for p in model.parameters())
    training_only = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith(("auxiliary_head.", "decode_head.se_layer."))
    )
    return (total - training_only) / 1e6, total / 1e6


def _metafile_name(variant: Variant) -> str:
    return variant.metrics_source.rsplit("/configs/", 1)[-1]


def card_data(variant: Variant) -> ModelCardData:
    """The YAML metadata: licence, tags, datasets and the model-index with mmsegmentation's reported mIoU."""
    dataset = DATASET_NAMES[variant.dataset]
    source_name = f"mmsegmentation v1.2.2 {_metafile_name(variant)}"
    results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=DATASET_IDS[variant.dataset],
            dataset_name=dataset,
            dataset_split="validation",
            metric_type="mean_iou",
            metric_name=name,
            metric_value=value,
            metric_config=config,
            source_name=source_name,
            source_url=variant.metrics_source,
        )
        for name, value, config in (
            ("mIoU", variant.miou, "single-scale"),
            ("mIoU (ms+flip)", variant.miou_ms_flip, "multi-scale+flip"),
        )
        if value is not None
    ]
    return ModelCardData(
        model_name=variant.name,
        library_name="fastfcn-hub",
        pipeline_tag="image-segmentation",
        license="apache-2.0",
        datasets=[DATASET_IDS[variant.dataset]],
        metrics=["mean_iou"],
        tags=[
            "semantic-segmentation",
            "fastfcn",
            "jpu" if variant.config.get("neck") else "dilated-resnet",
            variant.config["decode_head"],
            variant.dataset,
            "mmsegmentation",
            "timm",
        ],  # fmt: skip
        eval_results=results,
    )


def _body(variant: Variant, config: Any, converted_from: dict[str, str] | None) -> str:
    from .variants import variant_config

    config = config if config is not None else variant_config(variant.name)
    inference_m, total_m = _parameter_counts(config)
    dataset = DATASET_NAMES[variant.dataset]
    recipe = variant.training
    crop = "x".join(str(v) for v in recipe["crop_size"])
    gpus, per_gpu = recipe["batch"].split("x")
    config_url = f"{MMSEG_CONFIGS}/{variant.mmseg_config.split('_')[0]}/{variant.mmseg_config}.py"
    neck = "Joint Pyramid Upsampling (JPU) neck: 512 channels per branch, dilations 1, 2, 4, 8, output at stride 8"
    training_heads = "auxiliary FCN head (stride-16 features, loss weight 0.4)" + (
        " and the SE layer (loss weight 0.2)" if config.decode_head == "enc" else ""
    )
    kept = config.use_auxiliary_head
    note = REFERENCE_TABLE_NOTES.get(variant.name, "")
    scenes = "urban street scenes" if variant.dataset == "cityscapes" else "indoor and outdoor scenes"
    reduce = (
        ' ADE20K labels are reduced (0 = "other" is ignored, 1..150 become 0..149).'
        if variant.dataset == "ade20k"
        else ""
    )
    test_scale = {
        "cityscapes": "2048x1024 (Cityscapes images are evaluated at their own size)",
        "ade20k": "images resized keeping their aspect ratio to fit 2048x512",
    }[variant.dataset]
    lines = [
        f"# {variant.name}",
        "",
        f"**{variant.description}**, trained on {dataset}.",
        "",
        f"mmsegmentation's `{variant.mmseg_config}` checkpoint, converted to a transformers model by "
        "fastfcn-hub. [FastFCN](https://arxiv.org/abs/1903.11816) (Wu et al., 2019) replaces the dilated backbone "
        "of a segmentation network by a strided one plus a Joint Pyramid Upsampling neck."
        if config.neck
        else f"mmsegmentation's `{variant.mmseg_config}` checkpoint, converted to a transformers model by "
        "fastfcn-hub: the dilated-backbone baseline that FastFCN (Wu et al., 2019) is compared against.",
        "",
        "## Model",
        "",
        f"- Backbone: {_BACKBONES[config.backbone_layout]}.",
        *([f"- Neck: {neck}."] if config.neck else ["- Neck: none (the head reads the stride-8 backbone features)."]),
        f"- Decode head: {_HEADS[config.decode_head]}; {config.num_labels} {dataset} classes.",
        f"- Training-only weights: {training_heads}: "
        + (
            "kept, so that fine-tuning resumes from the trained state."
            if kept
            else "dropped (`--drop-training-heads`)."
        ),
        f"- Parameters: {inference_m:.2f} M at inference, {total_m:.2f} M with the training-only heads "
        "(counted from the model).",
        "- Input: RGB, scaled to 0-1 and normalised with ImageNet's mean and std (mmsegmentation's "
        "`mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]` on 0-255). Output: logits at stride 8.",
        "",
        "## Training (mmsegmentation's recipe, from its config)",
        "",
        f"- Config: [`{variant.mmseg_config}`]({config_url}).",
        f"- {dataset} train split, {recipe['iterations']:,} iterations, {gpus} GPUs x {per_gpu} images, random crops "
        f"of {crop}, SyncBN.{reduce}",
        f"- Optimiser: {recipe['optimizer']}; schedule: {recipe['schedule']}.",
        "- Backbone initialised from ImageNet (`open-mmlab://resnet50_v1c`).",
        "",
        "## Results (reported by mmsegmentation, not re-measured here)",
        "",
        f"| {dataset} val | mIoU | mIoU (multi-scale + flip) |",
        "|---|---:|---:|",
        f"| {variant.name} | {variant.miou:.2f} | {variant.miou_ms_flip:.2f} |",
        "",
        f"Source: mmsegmentation v1.2.2 [`configs/{_metafile_name(variant)}`]({variant.metrics_source}). "
        f"mmsegmentation evaluates whole images at test scale {test_scale}. {note}".rstrip(),
        "",
        "## Original checkpoint",
        "",
        f"- URL: {variant.mmseg_checkpoint}",
        f"- Hash: `{variant.checkpoint_hash}` (the sha256 prefix in mmsegmentation's file name; `fastfcn-hub convert "
        "URL` checks it when it downloads).",
        *(
            [f"- Converted from: `{converted_from['filename']}`, sha256 `{converted_from['sha256']}`."]
            if converted_from
            else []
        ),  # fmt: skip
        "",
        "## How the conversion was verified",
        "",
        "The weights map key for key onto mmsegmentation's (only the backbone stem is renamed: `stem.{0,1,3,4,6}` -> "
        "`conv1.*`, `stem.7` -> `bn1`), and the conversion refuses missing, unexpected or mis-shaped tensors. "
        "fastfcn-hub's parity tests (`tests/test_parity_mmseg.py`, run in CI) build this architecture from "
        f"mmsegmentation 1.2.2's own `{variant.mmseg_config}` config (SyncBN as BN), give every weight and BatchNorm "
        "statistic random values, save them in mmsegmentation's checkpoint format and convert them with this tool. "
        "From the same uint8 RGB image through each side's own preprocessing, the full-resolution logits of "
        "whole-image inference agree within 1e-4 (max abs, float32) at 64x128 and 80x136, and the training loss "
        "(decode + auxiliary" + (" + SE" if config.decode_head == "enc" else "") + ", mmsegmentation's reduction) "
        "within 1e-5 relative.",
        "",
        "## Usage",
        "",
        "```python",
        usage_snippet(variant),
        "```",
        "",
        "Or with the transformers pipeline:",
        "",
        "```python",
        PIPELINE_TEMPLATE.format(repo_id=variant.hub_repo_id),
        "```",
        "",
        "## Limitations",
        "",
        f"- Trained only on {dataset} ({scenes}); expect worse results on other domains and class sets.",
        "- The processor does not resize: images are segmented at their own size. To follow mmsegmentation's test "
        "protocol, resize first (`FastFCNImageProcessor.from_pretrained(repo_id, do_resize=True, size="
        + (
            '{"longest_edge": 2048, "shortest_edge": 1024}'
            if variant.dataset == "cityscapes"
            else '{"longest_edge": 2048, "shortest_edge": 512}'
        )
        + ")`); its resize is bilinear on float tensors, "
        "mmsegmentation's is OpenCV's on uint8, so scores can differ slightly.",
        "- The scores above are mmsegmentation's; fastfcn-hub proved that the conversion computes what mmsegmentation "
        "computes, not the scores themselves.",
        "- The model's default loss averages cross-entropy over non-ignored pixels; mmsegmentation averaged over all "
        'pixels. Load with `loss_average="all"` to train with mmsegmentation\'s loss.',
        *(
            ["- The Encoding layer holds a [batch, H/8 x W/8, 32, 512] float tensor: memory grows with image area."]
            if config.decode_head == "enc"
            else []
        ),  # fmt: skip
        "",
        "## Licence and attribution",
        "",
        "Apache-2.0, as mmsegmentation. The weights were trained and released by OpenMMLab's "
        f"[mmsegmentation]({MMSEG_REPO}); fastfcn-hub only converted them.",
        "",
        "```bibtex",
        "@article{wu2019fastfcn,",
        "  title={FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic Segmentation},",
        "  author={Wu, Huikai and Zhang, Junge and Huang, Kaiqi and Liang, Kongming and Yu, Yizhou},",
        "  journal={arXiv preprint arXiv:1903.11816},",
        "  year={2019}",
        "}",
        "@misc{mmseg2020,",
        "  title={{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},",
        "  author={MMSegmentation Contributors},",
        "  howpublished={\\url{https://github.com/open-mmlab/mmsegmentation}},",
        "  year={2020}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


def model_card(variant: Variant | str, converted_from: dict[str, str] | None = None, config: Any = None) -> ModelCard:
    """The card of a released variant. `converted_from` ({filename, sha256}) records the file actually converted;
    `config` is the converted model's config (it differs from the variant's with `--drop-training-heads`)."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    if not variant.released:
        raise ValueError(f"{variant.name!r} has no released checkpoint, so no model card.")
    return ModelCard(f"---\n{card_data(variant).to_yaml()}\n---\n\n{_body(variant, config, converted_from)}")


def card_path(variant: Variant, output_dir: Path = DEFAULT_OUTPUT) -> Path:
    return output_dir / f"{variant.name}.md"


def write_model_cards(output_dir: Path = DEFAULT_OUTPUT, check: bool = False) -> list[Path]:
    """Write one card per released variant (or with `check=True` only compare); returns the paths that differ."""
    changed = []
    for variant in (v for v in VARIANTS if v.released):
        path = card_path(variant, output_dir)
        text = str(model_card(variant))
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        changed.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate MODEL_CARDS/<variant>.md from the variant table.")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if a committed card is out of date")
    args = parser.parse_args(argv)
    changed = write_model_cards(args.output_dir, check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and changed:
        print("Run `python scripts/make_model_cards.py` to regenerate the cards.", file=sys.stderr)
        return 1
    print(f"{len([v for v in VARIANTS if v.released])} cards, {len(changed)} {'stale' if args.check else 'written'}")
    return 0


def pretrained_table_markdown() -> str:
    """The variant -> hub repo id table of the README's "Pretrained weights" section, from the variant table."""
    rows = [
        "| variant | hub repo id | mmsegmentation config | mIoU | mIoU (ms+flip) |",
        "|---|---|---|---:|---:|",
    ]
    for v in (v for v in VARIANTS if v.released):
        rows.append(
            f"| `{v.name}` | [`{v.hub_repo_id}`](https://huggingface.co/{v.hub_repo_id}) | `{v.mmseg_config}` | "
            f"{v.miou:.2f} | {v.miou_ms_flip:.2f} |"
        )
    return "\n".join(rows)


__all__ = ["card_data", "model_card", "pretrained_table_markdown", "usage_snippet", "write_model_cards"]
