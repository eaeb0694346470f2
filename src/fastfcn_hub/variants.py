"""The named variants: one plain table, timm style (`architecture.tag`).

A variant is a set of `FastFCNConfig` overrides, plus, for the released checkpoints, where the weights came from and
what mmsegmentation reported for them. The README table, the model cards and the hub repo ids all come from here.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

from .configuration_fastfcn import FastFCNConfig
from .labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, id2label_from_names

MMSEG_DOWNLOAD = "https://download.openmmlab.com/mmsegmentation/v0.5"
HUB_ORGANISATION = "fastfcn-hub"


@dataclass(frozen=True)
class Variant:
    """One named model: its config overrides and, when released, its checkpoint provenance and reported scores."""

    name: str
    description: str
    config: dict[str, Any]
    dataset: str | None = None  # "cityscapes" / "ade20k" for released checkpoints
    mmseg_config: str | None = None  # mmsegmentation 1.x config name
    mmseg_checkpoint: str | None = None  # original checkpoint URL
    miou: float | None = None  # mmsegmentation's reported single-scale mIoU
    miou_ms_flip: float | None = None  # ... and multi-scale + flip
    metrics_source: str | None = None  # where those numbers are published
    training: dict[str, Any] = field(default_factory=dict)  # recipe facts: iterations, batch, crop
    processor: dict[str, Any] = field(default_factory=dict)  # FastFCNImageProcessor options the dataset needs

    @property
    def architecture(self) -> str:
        return self.name.split(".")[0]

    @property
    def tag(self) -> str | None:
        return self.name.split(".", 1)[1] if "." in self.name else None

    @property
    def released(self) -> bool:
        return self.mmseg_checkpoint is not None

    @property
    def hub_repo_id(self) -> str | None:
        """The canonical hub repository of the converted weights (None for unreleased variants)."""
        if not self.released:
            return None
        return f"{HUB_ORGANISATION}/{self.name.replace('.', '-').replace('_', '-')}"

    @property
    def checkpoint_hash(self) -> str | None:
        """The short sha256 prefix mmsegmentation appends to its checkpoint file names."""
        if not self.mmseg_checkpoint:
            return None
        return self.mmseg_checkpoint.rsplit("-", 1)[-1].removesuffix(".pth")


# Building blocks of the table ------------------------------------------------------------------------------------------

_CITYSCAPES = {"id2label": id2label_from_names(CITYSCAPES_CLASSES)}
_ADE20K = {"id2label": id2label_from_names(ADE20K_CLASSES)}
_JPU_R50 = {"backbone": "resnet50c", "backbone_layout": "d32_mmseg", "neck": "jpu"}
_JPU_R101 = {"backbone": "resnet101c", "backbone_layout": "d32_mmseg", "neck": "jpu"}
_D8_R50 = {"backbone": "resnet50c", "backbone_layout": "d8", "neck": None}
_HEADS = {"aspp": {"decode_head": "aspp"}, "psp": {"decode_head": "psp"}, "enc": {"decode_head": "enc"}}
_HEAD_NAMES = {"aspp": "DeepLabV3 (ASPP)", "psp": "PSPNet (pyramid pooling)", "enc": "EncNet (context encoding)"}
# Light ResNet-18 models for CPU tests and the demo: narrower neck and heads, same structure.
_LIGHT = {"backbone": "resnet18", "jpu_channels": 64, "head_channels": 64, "auxiliary_channels": 32, "num_codes": 16}
_MMSEG_CONFIGS = "https://github.com/open-mmlab/mmsegmentation/blob/v1.2.2/configs"
_FASTFCN_README = f"{_MMSEG_CONFIGS}/fastfcn/metafile.yaml"
_CITYSCAPES_RECIPE = {"iterations": 80_000, "crop_size": (512, 1024), "optimizer": "SGD lr 0.01, momentum 0.9, wd 5e-4",
                      "schedule": "poly, power 0.9, min lr 1e-4"}  # fmt: skip
# Beyond ResNet (the paper's JPU replaces dilation in any stride-8/16/32 pyramid): timm backbone, its short title, and
# the width of the JPU branches and decode head (the auxiliary head gets half), sized to each backbone's cost.
_TIMM_JPU = {
    "convnext_tiny": ("convnext_tiny", "ConvNeXt-T", 256),
    "efficientnet_b3": ("efficientnet_b3", "EfficientNet-B3", 128),
    "swin_tiny": ("swin_tiny_patch4_window7_224", "Swin-T", 256),
    "mobilenetv3_large": ("mobilenetv3_large_100", "MobileNetV3-Large", 64),
}


def _fastfcn_checkpoint(stem: str, stamp: str) -> str:
    return f"{MMSEG_DOWNLOAD}/fastfcn/{stem}/{stem}_{stamp}.pth"


VARIANTS: tuple[Variant, ...] = (
    # Dilated R-50-D8 baselines on Cityscapes (the reference table's rows; mmsegmentation's own configs).
    Variant("deeplabv3_r50_d8.cityscapes", "DeepLabV3, dilated ResNet-50-D8 baseline", {**_D8_R50, **_HEADS["aspp"], **_CITYSCAPES},
            "cityscapes", "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024",
            f"{MMSEG_DOWNLOAD}/deeplabv3/deeplabv3_r50-d8_512x1024_80k_cityscapes/deeplabv3_r50-d8_512x1024_80k_cityscapes_20200606_113404-b92cfdd4.pth",
            79.32, 80.57, f"{_MMSEG_CONFIGS}/deeplabv3/metafile.yaml", {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    Variant("pspnet_r50_d8.cityscapes", "PSPNet, dilated ResNet-50-D8 baseline", {**_D8_R50, **_HEADS["psp"], **_CITYSCAPES},
            "cityscapes", "pspnet_r50-d8_4xb2-80k_cityscapes-512x1024",
            f"{MMSEG_DOWNLOAD}/pspnet/pspnet_r50-d8_512x1024_80k_cityscapes/pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth",
            78.55, 79.79, f"{_MMSEG_CONFIGS}/pspnet/metafile.yaml", {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    Variant("encnet_r50_d8.cityscapes", "EncNet, dilated ResNet-50-D8 baseline", {**_D8_R50, **_HEADS["enc"], **_CITYSCAPES},
            "cityscapes", "encnet_r50-d8_4xb2-80k_cityscapes-512x1024",
            f"{MMSEG_DOWNLOAD}/encnet/encnet_r50-d8_512x1024_80k_cityscapes/encnet_r50-d8_512x1024_80k_cityscapes_20200622_003554-fc5c5624.pth",
            77.94, 79.13, f"{_MMSEG_CONFIGS}/encnet/metafile.yaml", {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    # FastFCN (JPU, R-50-D32) on Cityscapes: 4 GPUs x 2 and 4 GPUs x 4 images, two checkpoints of one architecture.
    Variant("fastfcn_r50_jpu_aspp.cityscapes_4xb2", "FastFCN + DeepLabV3, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["aspp"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_aspp_4xb2-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_aspp_512x1024_80k_cityscapes", "20210928_053722-5d1a2648"),
            79.12, 80.58, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    Variant("fastfcn_r50_jpu_aspp.cityscapes_4xb4", "FastFCN + DeepLabV3, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["aspp"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_aspp_4xb4-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_aspp_4x4_512x1024_80k_cityscapes", "20210924_214357-72220849"),
            79.52, 80.91, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x4"}),
    Variant("fastfcn_r50_jpu_psp.cityscapes_4xb2", "FastFCN + PSPNet, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["psp"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_psp_512x1024_80k_cityscapes", "20210928_053722-57749bed"),
            79.26, 80.86, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    Variant("fastfcn_r50_jpu_psp.cityscapes_4xb4", "FastFCN + PSPNet, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["psp"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_psp_4xb4-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_psp_4x4_512x1024_80k_cityscapes", "20210925_061841-77e87b0a"),
            78.76, 80.03, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x4"}),
    Variant("fastfcn_r50_jpu_enc.cityscapes_4xb2", "FastFCN + EncNet, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["enc"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_enc_4xb2-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_enc_512x1024_80k_cityscapes", "20210928_030036-78da5046"),
            77.97, 79.92, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x2"}),
    Variant("fastfcn_r50_jpu_enc.cityscapes_4xb4", "FastFCN + EncNet, ResNet-50-D32 + JPU", {**_JPU_R50, **_HEADS["enc"], **_CITYSCAPES},
            "cityscapes", "fastfcn_r50-d32_jpu_enc_4xb4-80k_cityscapes-512x1024",
            _fastfcn_checkpoint("fastfcn_r50-d32_jpu_enc_4x4_512x1024_80k_cityscapes", "20210926_093217-e1eb6dbb"),
            78.6, 80.25, _FASTFCN_README, {**_CITYSCAPES_RECIPE, "batch": "4x4"}),
    # FastFCN on ADE20K (150 classes, crop 512x512, 4 GPUs x 4 images).
    *(
        Variant(f"fastfcn_r50_jpu_{head}.ade20k_{iters}", f"FastFCN + {_HEAD_NAMES[head].split(' ')[0]}, ResNet-50-D32 + JPU",
                {**_JPU_R50, **_HEADS[head], **_ADE20K}, "ade20k", f"fastfcn_r50-d32_jpu_{head}_4xb4-{iters}_ade20k-512x512",
                _fastfcn_checkpoint(f"fastfcn_r50-d32_jpu_{head}_512x512_{iters}_ade20k", stamp), miou, ms, _FASTFCN_README,
                {"iterations": int(iters[:-1]) * 1000, "crop_size": (512, 512), "batch": "4x4",
                 "optimizer": "SGD lr 0.01, momentum 0.9, wd 5e-4", "schedule": "poly, power 0.9, min lr 1e-4"},
                {"do_reduce_labels": True})  # ADE20K label 0 is "other": ignored, the rest shift down by one
        for head, iters, stamp, miou, ms in (
            ("aspp", "80k", "20211013_190619-3aa40f2d", 41.88, 42.91),
            ("aspp", "160k", "20211008_152246-27036aee", 43.58, 44.92),
            ("psp", "80k", "20210930_225137-993d07c8", 41.40, 42.12),
            ("psp", "160k", "20211008_105455-e8f5a2fd", 42.63, 43.71),
            ("enc", "80k", "20210930_225214-65aef6dd", 40.88, 42.36),
            ("enc", "160k", "20211008_105456-d875ce3c", 42.50, 44.21),
        )
    ),
    # ResNet-101 JPU models (no released weights; mmsegmentation has no R-101 FastFCN).
    *(
        Variant(f"fastfcn_r101_jpu_{head}", f"FastFCN + {_HEAD_NAMES[head].split(' ')[0]}, ResNet-101-D32 + JPU",
                {**_JPU_R101, **_HEADS[head]})
        for head in ("aspp", "psp", "enc")
    ),
    # Light ResNet-18 models: CPU tests, the demo, quick experiments.
    *(
        Variant(f"fastfcn_r18_jpu_{head}", f"Light FastFCN + {_HEAD_NAMES[head].split(' ')[0]}, ResNet-18-D32 + JPU",
                {**_LIGHT, "backbone_layout": "d32", **_HEADS[head]})
        for head in ("aspp", "psp", "enc")
    ),
    *(
        Variant(f"{arch}_r18_d8", f"Light {_HEAD_NAMES[head].split(' ')[0]}, dilated ResNet-18-D8 baseline",
                {**_LIGHT, "backbone_layout": "d8", "neck": None, **_HEADS[head]})
        for arch, head in (("deeplabv3", "aspp"), ("pspnet", "psp"), ("encnet", "enc"))
    ),
    # Other timm families + JPU: ImageNet backbones (`backbone_pretrained=True`), not pretrained on segmentation data.
    *(
        Variant(f"fastfcn_{short}_jpu_{head}",
                f"FastFCN + {_HEAD_NAMES[head].split(' ')[0]}, {title} + JPU (not pretrained on segmentation data)",
                {"backbone": backbone, "backbone_layout": "d32", "neck": "jpu", "jpu_channels": width,
                 "head_channels": width, "auxiliary_channels": width // 2, "num_codes": 16 if width < 128 else 32,
                 **_HEADS[head]})
        for short, (backbone, title, width) in _TIMM_JPU.items()
        for head in ("aspp", "psp", "enc")
    ),
)  # fmt: skip

_BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}


def list_models(pattern: str | None = None, released: bool | None = None) -> list[str]:
    """Names of the variants, optionally filtered by a shell-style pattern (`"*jpu*"`) and by released weights."""
    names = [v.name for v in VARIANTS if released is None or v.released == released]
    if pattern:
        names = [name for name in names if fnmatch.fnmatch(name, pattern)]
    return names


def variant_table_markdown() -> str:
    """The README's variant table, generated from `VARIANTS` so that the two cannot drift apart."""
    rows = [
        "| name | model | classes | converted weights | mIoU | mIoU (ms+flip) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for v in VARIANTS:
        classes = len(v.config.get("id2label", {})) or 19
        weights = f"`{v.hub_repo_id}`" if v.hub_repo_id else "—"
        miou = f"{v.miou:.2f}" if v.miou is not None else "—"
        ms = f"{v.miou_ms_flip:.2f}" if v.miou_ms_flip is not None else "—"
        rows.append(f"| `{v.name}` | {v.description} | {classes} | {weights} | {miou} | {ms} |")
    return "\n".join(rows)


def get_variant(name: str) -> Variant:
    """Look a variant up by full name, or by architecture alone (its first tag). Unknown names suggest matches."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    for variant in VARIANTS:
        if variant.architecture == name:
            return variant
    choices = list(_BY_NAME) + sorted({v.architecture for v in VARIANTS})
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"Unknown FastFCN variant {name!r}.{hint} See fastfcn_hub.list_models() for all names.")


def variant_config(name: str, **overrides: Any) -> FastFCNConfig:
    """The `FastFCNConfig` of a named variant, with keyword overrides (e.g. `num_labels=5`)."""
    variant = get_variant(name)
    kwargs = {**variant.config, **overrides}
    if "num_labels" in overrides and "id2label" not in overrides:
        kwargs.pop("id2label", None)  # the variant's class names no longer apply
    return FastFCNConfig(**kwargs)


def create_model(
    name: str,
    pretrained: bool = False,
    backbone_pretrained: bool | str | os.PathLike = False,
    **overrides: Any,
):
    """Build a named variant.

    Args:
        name: a name from `list_models()` (`"fastfcn_r50_jpu_psp.cityscapes_4xb2"`, or the architecture alone).
        pretrained: load the converted mmsegmentation weights from the variant's hub repo (needs the network once).
        backbone_pretrained: start the backbone from ImageNet weights: `True` downloads timm's weights for the
            config's backbone, a path loads a local timm weights file.
        **overrides: `FastFCNConfig` fields to change (e.g. `num_labels=5`, `use_auxiliary_head=False`).
    """
    from .modeling_fastfcn import FastFCNForSemanticSegmentation

    variant = get_variant(name)
    if pretrained:
        if variant.hub_repo_id is None:
            released = ", ".join(list_models(released=True))
            raise ValueError(f"{variant.name!r} has no released weights. Variants with weights: {released}.")
        try:
            return FastFCNForSemanticSegmentation.from_pretrained(variant.hub_repo_id, **overrides)
        except OSError as error:
            raise OSError(
                f"Could not load {variant.hub_repo_id!r} from the Hugging Face Hub (offline, or not in the cache). "
                "Connect once to download it, or convert the original mmsegmentation checkpoint locally with "
                f"`fastfcn-hub convert {variant.mmseg_checkpoint} ./{variant.architecture}` and load that directory."
            ) from error
    model = FastFCNForSemanticSegmentation(variant_config(name, **overrides))
    if backbone_pretrained:
        model.load_backbone_weights(None if backbone_pretrained is True else backbone_pretrained)
    return model


__all__ = ["VARIANTS", "Variant", "create_model", "get_variant", "list_models", "variant_config"]
