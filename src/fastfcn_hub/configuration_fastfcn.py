"""FastFCN model configuration.

One config describes the whole family: a timm backbone in one of four layouts, an optional Joint Pyramid
Upsampling (JPU) neck, one of four decode heads and the auxiliary FCN head. Closed choices are checked here, so a
bad value fails when the config is made, not deep inside a forward pass.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import PreTrainedConfig

from .labels import CITYSCAPES_CLASSES, id2label_from_names

BACKBONE_LAYOUTS = ("d32_mmseg", "d32", "d16", "d8")
"""Backbone layouts: output stride and where the 3x3 convolutions are dilated.

- ``d32_mmseg``: output stride 32, with mmsegmentation's contracted dilations 1, 1, 2, 4 on top of the strides
  (the layout of every released FastFCN checkpoint).
- ``d32``: a plain output-stride-32 backbone with no dilation (the FastFCN paper's design).
- ``d16`` / ``d8``: the dilated backbones of the baselines (the last one or two stages dilated, not strided).
"""
RESNET_ONLY_LAYOUTS = ("d32_mmseg", "d16", "d8")
NECKS = ("jpu",)
DECODE_HEADS = ("aspp", "psp", "enc", "fcn")
LOSS_AVERAGES = ("valid", "all")
FEATURE_REDUCTIONS = (8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_MULTIPLE = 32
"""Inputs of non-ResNet backbones are zero-padded to a multiple of this, their coarsest reduction (patch embeddings
and attention windows need it); the features are cropped back (`modeling_fastfcn.backbone_features`)."""
TIMM_ANY_SIZE_KWARGS: dict[str, dict[str, Any]] = {
    # Swin fixes its input size at construction unless told otherwise; with `strict_img_size=False` it builds its
    # attention masks per forward. `img_size` then only sets the window layout: at 512 every stage shifts its windows,
    # as mmsegmentation's Swin does at segmentation sizes (at 224 the last stage would not).
    "swin_transformer": {"img_size": 512, "strict_img_size": False},
    "swin_transformer_v2": {"strict_img_size": False},
}
"""Extra `timm.create_model` arguments, per timm family (module name), that let a backbone take any input size."""
_PROBE_SIZE = (96, 160)  # 3 x 5 at stride 32: odd, no attention-window multiple, not a pretraining size


def timm_family(backbone: str) -> str:
    """The timm module that defines `backbone` (`"resnet"`, `"convnext"`, `"swin_transformer"`, ...)."""
    import timm

    name = backbone.split(".")[0]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        hint = f" Similar timm names: {', '.join(close)}." if close else ""
        raise ValueError(f"`backbone={backbone!r}` is not a timm model.{hint}")
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def timm_backbone_kwargs(backbone: str) -> dict[str, Any]:
    """The `timm.create_model` arguments `backbone` needs to take inputs of any size (see `TIMM_ANY_SIZE_KWARGS`)."""
    return dict(TIMM_ANY_SIZE_KWARGS.get(timm_family(backbone), {}))


def _offered_levels(channels: tuple[int, ...], reductions: tuple[int, ...]) -> str:
    return ", ".join(f"[{i}] reduction {r} ({c} ch)" for i, (r, c) in enumerate(zip(reductions, channels)))


@functools.lru_cache(maxsize=64)
def timm_feature_info(backbone: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Channels and reductions of every feature level a timm model exposes, plus its family (module name).

    The model is built, and for families other than ResNet run once on a small odd-sized input, on the meta device:
    this costs no memory and no weight initialisation, and refuses at config time a backbone whose timm model only
    takes fixed or window-multiple input sizes (FastFCN segments whole images of any size).
    """
    import timm
    import torch

    family = timm_family(backbone)
    try:
        with torch.device("meta"):
            model = timm.create_model(
                backbone.split(".")[0], pretrained=False, features_only=True, **timm_backbone_kwargs(backbone)
            )
    except Exception as error:  # timm raises RuntimeError or others for models without features_only
        raise ValueError(
            f"`backbone={backbone!r}` cannot be used: timm cannot build it with `features_only=True` ({error})."
        ) from error
    channels, reductions = tuple(model.feature_info.channels()), tuple(model.feature_info.reduction())
    if family != "resnet" and set(FEATURE_REDUCTIONS) <= set(reductions):  # else resolve_out_indices explains
        height, width = _PROBE_SIZE
        try:
            with torch.device("meta"):
                features = model(torch.empty(1, 3, height, width))
            channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
            shapes = [tuple(f.shape[1:]) for f in features]
            expected = [
                (height // r, width // r, c) if channels_last else (c, height // r, width // r)
                for r, c in zip(reductions, channels)
            ]
            if shapes != expected:
                raise ValueError(f"its levels have shapes {shapes}, not the {expected} its feature_info promises")
        except Exception as error:
            raise ValueError(
                f"`backbone={backbone!r}` cannot be used: FastFCN needs a backbone that takes inputs of any size "
                f"(padded to a multiple of {SIZE_MULTIPLE}), but timm's `{backbone.split('.')[0]}` failed on a "
                f"{height}x{width} input: {error}"
            ) from error
    return channels, reductions, family


def resolve_out_indices(backbone: str) -> tuple[int, ...]:
    """Indices of the timm feature levels at reductions 8, 16 and 32 (the last level of each reduction)."""
    channels, reductions, _ = timm_feature_info(backbone)
    indices = []
    for wanted in FEATURE_REDUCTIONS:
        matches = [i for i, reduction in enumerate(reductions) if reduction == wanted]
        if not matches:
            raise ValueError(
                f"`backbone={backbone!r}` has no feature level at reduction {wanted}; FastFCN needs levels at "
                f"reductions 8, 16 and 32. It offers: {_offered_levels(channels, reductions)}."
            )
        indices.append(matches[-1])
    return tuple(indices)


def check_out_indices(backbone: str, indices: tuple[int, ...] | list[int]) -> None:
    """Explicit `backbone_out_indices` must name three levels at reductions 8, 16 and 32, in that order."""
    channels, reductions, _ = timm_feature_info(backbone)
    in_range = all(isinstance(i, int) and -len(reductions) <= i < len(reductions) for i in indices)
    if not in_range or tuple(reductions[i] for i in indices) != FEATURE_REDUCTIONS:
        raise ValueError(
            f"`backbone_out_indices={list(indices)}` must name the levels of `{backbone}` at reductions 8, 16 and 32 "
            f"(or be None to pick them). It offers: {_offered_levels(channels, reductions)}."
        )


def timm_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std, for pixel values in [0, 1], that `backbone`'s pretrained timm weights expect.

    A tag in the name picks the weights (`resnet50d.ra4_e3600_r224_in1k` was trained with 0.5 / 0.5), no tag means
    timm's default weights; a model with no pretrained weights gets ImageNet's statistics.
    """
    import timm

    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError as error:  # timm: "Invalid pretrained tag (...) for ..."
        tags = timm.list_pretrained(f"{backbone.split('.')[0]}.*")
        raise ValueError(
            f"`backbone={backbone!r}` names pretrained weights timm does not have. Available: "
            f"{', '.join(tags) or 'none'}."
        ) from error
    if pretrained_cfg is None or pretrained_cfg.mean is None or pretrained_cfg.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in pretrained_cfg.mean), tuple(float(v) for v in pretrained_cfg.std)


class FastFCNConfig(PreTrainedConfig):
    r"""
    Configuration of a FastFCN semantic segmentation model (Wu et al., 2019, arXiv:1903.11816) and of the dilated
    baselines it is measured against. The defaults give mmsegmentation's FastFCN PSPNet on Cityscapes
    (`fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024`).

    Args:
        backbone (`str`, *optional*, defaults to `"resnet50c"`):
            timm model name (optionally with a pretrained tag, e.g. `"resnet50c.gluon_in1k"`). `resnet50c` /
            `resnet101c` equal mmsegmentation's ResNetV1c. Any timm model whose `features_only` form has levels at
            reductions 8, 16 and 32 and takes any input size works (`"convnext_tiny"`, `"efficientnet_b3"`,
            `"swin_tiny_patch4_window7_224"`, ...); others are refused here, with the levels they offer.
        backbone_layout (`str`, *optional*, defaults to `None`):
            One of `"d32_mmseg"`, `"d32"`, `"d16"`, `"d8"`: output stride and dilation of the backbone (see
            `BACKBONE_LAYOUTS`). All but `"d32"` are ResNet-only. `None` picks `"d32_mmseg"` for timm ResNets and
            `"d32"` for every other family.
        backbone_out_indices (`tuple[int]`, *optional*, defaults to `None`):
            timm feature indices of the stride-8, -16 and -32 levels. `None` resolves them from the backbone's
            `feature_info` by reduction.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        neck (`str`, *optional*, defaults to `"jpu"`):
            `"jpu"` for the Joint Pyramid Upsampling neck, or `None` to feed the last backbone level to the head
            (the dilated baselines).
        jpu_channels (`int`, *optional*, defaults to 512):
            Width of each JPU branch; the JPU outputs `len(jpu_dilations) * jpu_channels` channels.
        jpu_dilations (`tuple[int]`, *optional*, defaults to `(1, 2, 4, 8)`):
            Dilations of the JPU's separable convolutions, one branch each.
        decode_head (`str`, *optional*, defaults to `"psp"`):
            One of `"aspp"` (DeepLabV3), `"psp"` (PSPNet pyramid pooling), `"enc"` (EncNet context encoding) or
            `"fcn"` (plain FCN).
        head_channels (`int`, *optional*, defaults to 512):
            Width of the decode head's internal convolutions.
        pool_scales (`tuple[int]`, *optional*, defaults to `(1, 2, 3, 6)`):
            Bin sizes of the PSP head's pyramid pooling.
        aspp_dilations (`tuple[int]`, *optional*, defaults to `(1, 12, 24, 36)`):
            Dilations of the ASPP branches (the first is a 1x1 convolution when it is 1).
        num_codes (`int`, *optional*, defaults to 32):
            Number of codewords in the EncNet Encoding layer.
        use_se_loss (`bool`, *optional*, defaults to `True`):
            Whether the EncNet head has the semantic encoding (SE) branch and loss.
        fcn_num_convs (`int`, *optional*, defaults to 2):
            Number of 3x3 convolutions in the `"fcn"` decode head.
        fcn_concat_input (`bool`, *optional*, defaults to `True`):
            Whether the `"fcn"` decode head concatenates its input with its output before classifying.
        use_auxiliary_head (`bool`, *optional*, defaults to `True`):
            Whether to build the auxiliary FCN head on the stride-16 backbone level (used for the training loss only).
        auxiliary_channels (`int`, *optional*, defaults to 256):
            Width of the auxiliary FCN head.
        auxiliary_loss_weight (`float`, *optional*, defaults to 0.4):
            Weight of the auxiliary cross-entropy loss.
        se_loss_weight (`float`, *optional*, defaults to 0.2):
            Weight of the EncNet SE loss (binary cross-entropy on which classes are present).
        loss_average (`str`, *optional*, defaults to `"valid"`):
            How cross-entropy is averaged: `"valid"` over non-ignored pixels (PyTorch's and transformers'
            convention) or `"all"` over every pixel, ignored ones counting zero (mmsegmentation's default).
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout (`Dropout2d`) before each classifier convolution.
        align_corners (`bool`, *optional*, defaults to `False`):
            `align_corners` of every bilinear resize (mmsegmentation uses `False`; the official FastFCN code `True`).
        image_mean (`tuple[float]`, *optional*, defaults to `None`):
            Per-channel mean of the input after rescaling, in RGB order. `None` takes the mean the backbone's
            pretrained timm weights were trained with (ImageNet's `(0.485, 0.456, 0.406)` for the ResNets, ConvNeXt,
            EfficientNet, Swin and MobileNetV3 defaults; `(0.5, 0.5, 0.5)` for e.g. `resnet50d.ra4_e3600_r224_in1k`).
        image_std (`tuple[float]`, *optional*, defaults to `None`):
            Per-channel standard deviation of the input after rescaling, in RGB order; `None` as for `image_mean`
            (ImageNet's `(0.229, 0.224, 0.225)` for the ResNets).
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Factor that maps raw 8-bit pixel values to the scale `image_mean` / `image_std` are given in (timm's
            statistics are for values in [0, 1], hence 1/255).
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by every loss and metric.
        initializer_range (`float`, *optional*, defaults to 0.01):
            Standard deviation of the normal initialisation of the classifier convolutions.

    Labels default to Cityscapes' 19 train classes; pass `id2label` (or `num_labels`) for other datasets.

    Example:

    ```python
    >>> from fastfcn_hub import FastFCNConfig, FastFCNForSemanticSegmentation
    >>> config = FastFCNConfig(backbone="resnet18", jpu_channels=64, head_channels=64, auxiliary_channels=32)
    >>> model = FastFCNForSemanticSegmentation(config)
    >>> model.config.num_labels
    19
    ```
    """

    model_type = "fastfcn"

    backbone: str = "resnet50c"
    backbone_layout: str | None = None
    backbone_out_indices: list[int] | tuple[int, ...] | None = None
    num_channels: int = 3
    neck: str | None = "jpu"
    jpu_channels: int = 512
    jpu_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8)
    decode_head: str = "psp"
    head_channels: int = 512
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    aspp_dilations: list[int] | tuple[int, ...] = (1, 12, 24, 36)
    num_codes: int = 32
    use_se_loss: bool = True
    fcn_num_convs: int = 2
    fcn_concat_input: bool = True
    use_auxiliary_head: bool = True
    auxiliary_channels: int = 256
    auxiliary_loss_weight: float = 0.4
    se_loss_weight: float = 0.2
    loss_average: str = "valid"
    classifier_dropout: float = 0.1
    align_corners: bool = False
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    rescale_factor: float = 1 / 255
    semantic_loss_ignore_index: int = 255
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs: Any) -> None:
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = id2label_from_names(CITYSCAPES_CLASSES)
            self.label2id = {name: index for index, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        family = timm_feature_info(self.backbone)[2]  # refuses unusable backbones before anything else
        if self.backbone_layout is None:
            self.backbone_layout = "d32_mmseg" if family == "resnet" else "d32"
        if self.image_mean is None or self.image_std is None:
            self._resolve_normalisation()
        self._check_choices()
        if self.backbone_out_indices is None:
            self.backbone_out_indices = resolve_out_indices(self.backbone)
        else:
            check_out_indices(self.backbone, self.backbone_out_indices)

    def _resolve_normalisation(self) -> None:
        """Fill `image_mean` / `image_std` left `None` from the backbone's pretrained timm weights (saved configs
        carry concrete values, so reloading never consults timm)."""
        if self.num_channels != 3:
            raise ValueError(
                f"Pass `image_mean` and `image_std` ({self.num_channels} values each): timm's pretrained statistics "
                "are for RGB input."
            )
        mean, std = timm_normalisation(self.backbone)
        self.image_mean = mean if self.image_mean is None else self.image_mean
        self.image_std = std if self.image_std is None else self.image_std

    def _check_choices(self) -> None:
        def check(field: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise ValueError(f"`{field}={value!r}` is not supported; choose one of {allowed}.")

        check("backbone_layout", self.backbone_layout, BACKBONE_LAYOUTS)
        check("neck", self.neck, (*NECKS, None))
        check("decode_head", self.decode_head, DECODE_HEADS)
        check("loss_average", self.loss_average, LOSS_AVERAGES)
        _, _, family = timm_feature_info(self.backbone)
        if self.backbone_layout in RESNET_ONLY_LAYOUTS and family != "resnet":
            raise ValueError(
                f"`backbone_layout={self.backbone_layout!r}` dilates ResNet stages and only works with timm ResNets; "
                f"`{self.backbone}` is a {family} model. Use `backbone_layout='d32'` (with the JPU neck) instead."
            )
        if self.neck == "jpu" and self.backbone_layout not in ("d32", "d32_mmseg"):
            raise ValueError(
                f"The JPU neck fuses stride-8/16/32 features and needs an output-stride-32 backbone, but "
                f"`backbone_layout={self.backbone_layout!r}`. Use 'd32' or 'd32_mmseg', or `neck=None`."
            )
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(
                f"`image_mean` and `image_std` need {self.num_channels} values (one per input channel), got "
                f"{len(self.image_mean)} and {len(self.image_std)}."
            )
        if self.num_labels is None or self.num_labels < 1:
            raise ValueError("FastFCN needs at least one label; pass `id2label` or `num_labels`.")

    @property
    def output_stride(self) -> int:
        """Stride of the feature map the decode head sees (and of the logits)."""
        if self.neck == "jpu":
            return 8
        return {"d32_mmseg": 32, "d32": 32, "d16": 16, "d8": 8}[self.backbone_layout]


__all__ = ["FastFCNConfig"]
