"""FastFCN: a timm backbone, the Joint Pyramid Upsampling (JPU) neck and a DeepLabV3 / PSPNet / EncNet head.

Pixels to logits, in one read:

    pixel_values [B, 3, H, W]
      -> backbone (timm, features_only)  -> levels at stride 8, 16, 32 (or 8, 8, 8 for the dilated D8 baselines)
      -> neck (JPU)                      -> [B, 4 * 512, H/8, W/8]    (none for the baselines: the last level)
      -> decode_head (ASPP | PSP | Enc)  -> logits [B, num_labels, H/8, W/8]
      -> auxiliary_head (FCN, training)  -> logits from the stride-16 level

Submodule names follow mmsegmentation's (`conv_layers`, `dilation_layers`, `psp_modules`, `image_pool`,
`aspp_modules`, `enc_module`, `conv_seg`, ...), so its released checkpoints load with renames limited to the
backbone stem. Layer semantics follow mmsegmentation's FastFCN (open-mmlab/mmsegmentation, Apache-2.0).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_fastfcn import SIZE_MULTIPLE, FastFCNConfig, timm_backbone_kwargs, timm_family

# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


class FastFCNConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional ReLU; mmcv's ConvModule with its `conv` / `bn` key names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True) if activation else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(hidden_state)))


class FastFCNSeparableConv(nn.Module):
    """Depthwise 3x3 conv + BN (no activation), then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = FastFCNConvModule(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, activation=False
        )
        self.pointwise_conv = FastFCNConvModule(in_channels, out_channels, 1)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(hidden_state))


def resize(hidden_state: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize, the only resampling FastFCN uses."""
    return F.interpolate(hidden_state, size=size, mode="bilinear", align_corners=align_corners)


# --------------------------------------------------------------------------------------------------------------
# Neck
# --------------------------------------------------------------------------------------------------------------


class FastFCNJointPyramidUpsampling(nn.Module):
    """JPU (paper Sec. 3.3): fuse the stride-8/16/32 levels at stride 8 with parallel dilated separable convs.

    Each level is projected to `channels` by a 3x3 conv, the coarser ones are upsampled to stride 8 and the three are
    concatenated (shallow to deep). Each dilation branch sees the concatenation; their outputs are concatenated in
    dilation order, giving `len(dilations) * channels` channels. With `concat_output = False` (set by
    `optimize_for_inference` when every consumer takes channel blocks) the branches come back as a list instead.
    """

    def __init__(
        self, in_channels: list[int], channels: int, dilations: list[int] | tuple[int, ...], align_corners: bool
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv_layers = nn.ModuleList(
            nn.Sequential(FastFCNConvModule(width, channels, 3, padding=1)) for width in in_channels
        )
        self.dilation_layers = nn.ModuleList(
            nn.Sequential(FastFCNSeparableConv(len(in_channels) * channels, channels, dilation))
            for dilation in dilations
        )
        self.concat_output = True

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        projected = [layer(feature) for layer, feature in zip(self.conv_layers, features)]
        size = projected[0].shape[2:]
        projected = [projected[0]] + [resize(level, size, self.align_corners) for level in projected[1:]]
        fused = torch.cat(projected, dim=1)  # [B, levels * channels, H/8, W/8]
        branches = [branch(fused) for branch in self.dilation_layers]
        return torch.cat(branches, dim=1) if self.concat_output else branches


# --------------------------------------------------------------------------------------------------------------
# Decode heads. Each ends in `dropout` + `conv_seg` (1x1 conv with bias) like mmsegmentation's BaseDecodeHead.
# --------------------------------------------------------------------------------------------------------------


class FastFCNClassifierConv(nn.Conv2d):
    """The 1x1 classifier convolution; its own type so that it gets the classifier initialisation."""


class FastFCNClassifier(nn.Module):
    """Shared tail of every head: Dropout2d then a 1x1 classifier convolution (with bias)."""

    def __init__(self, channels: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = FastFCNClassifierConv(channels, num_labels, kernel_size=1)

    def classify(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(hidden_state))


class FastFCNASPPHead(FastFCNClassifier):
    """DeepLabV3's atrous spatial pyramid pooling: image pooling + parallel dilated convs, fused by a 3x3 conv."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_labels: int,
        dilations: list[int] | tuple[int, ...],
        dropout: float,
        align_corners: bool,
    ) -> None:
        super().__init__(channels, num_labels, dropout)
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), FastFCNConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            FastFCNConvModule(in_channels, channels, 1)
            if dilation == 1
            else FastFCNConvModule(in_channels, channels, 3, padding=dilation, dilation=dilation)
            for dilation in dilations
        )
        self.bottleneck = FastFCNConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.image_pool(hidden_state), hidden_state.shape[2:], self.align_corners)
        branches = [pooled] + [branch(hidden_state) for branch in self.aspp_modules]
        return self.classify(self.bottleneck(torch.cat(branches, dim=1)))


class FastFCNPyramidPoolingHead(FastFCNClassifier):
    """PSPNet's pyramid pooling: average-pool into bins, project, upsample, concatenate with the input."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_labels: int,
        pool_scales: list[int] | tuple[int, ...],
        dropout: float,
        align_corners: bool,
    ) -> None:
        super().__init__(channels, num_labels, dropout)
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), FastFCNConvModule(in_channels, channels, 1))
            for scale in pool_scales
        )
        self.bottleneck = FastFCNConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        size = hidden_state.shape[2:]
        pyramid = [hidden_state] + [
            resize(stage(hidden_state), size, self.align_corners) for stage in self.psp_modules
        ]
        return self.classify(self.bottleneck(torch.cat(pyramid, dim=1)))


class FastFCNEncoding(nn.Module):
    """Encoding layer (Zhang et al., 2018): soft-assign every pixel to `num_codes` codewords, aggregate residuals.

    For pixels x_n and codewords c_k with smoothing factors s_k:
        a_nk = softmax_k(s_k * ||x_n - c_k||^2),   e_k = sum_n a_nk (x_n - c_k)

    The direct formula builds a [B, N, K, C] residual tensor (2 GB for one 1024x2048 image). Here it is computed
    with matmuls, `chunk_size` pixels at a time: ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 and
    e_k = sum_n a_nk x_n - (sum_n a_nk) c_k. Pixels and codewords are first shifted by the mean pixel (distances and
    residuals do not change), which keeps the expansion's cancellation error at float32 rounding of the spread, not
    of the magnitude. Extra memory is O(B * chunk_size * (C + K)); it always runs in float32.
    """

    def __init__(self, channels: int, num_codes: int, chunk_size: int = 4096) -> None:
        super().__init__()
        self.channels, self.num_codes = channels, num_codes
        self.chunk_size = chunk_size  # pixels per chunk: bounds the working memory, not the result
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))
        self.scale = nn.Parameter(torch.empty(num_codes))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        device_type = hidden_state.device.type
        in_autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type, enabled=False) if in_autocast else contextlib.nullcontext():
            pixels = hidden_state.float().flatten(2).transpose(1, 2)  # [B, N, C] (a view for NCHW inputs)
            center = pixels.mean(dim=1, keepdim=True)  # [B, 1, C]
            codewords = self.codewords.float().unsqueeze(0) - center  # [B, K, C]
            codeword_norms = codewords.pow(2).sum(dim=2).unsqueeze(1)  # [B, 1, K]
            scale = self.scale.float().view(1, 1, self.num_codes)
            aggregated = pixels.new_zeros(pixels.shape[0], self.num_codes, self.channels)  # sum_n a_nk x_n
            mass = pixels.new_zeros(pixels.shape[0], self.num_codes, 1)  # sum_n a_nk
            for chunk in pixels.split(self.chunk_size, dim=1):
                chunk = chunk - center  # [B, n, C]
                distances = chunk.pow(2).sum(dim=2, keepdim=True) - 2 * chunk @ codewords.transpose(1, 2)
                assignment = F.softmax(scale * (distances + codeword_norms), dim=2)  # [B, n, K]
                aggregated = aggregated + assignment.transpose(1, 2) @ chunk
                mass = mass + assignment.sum(dim=1).unsqueeze(2)
            return aggregated - mass * codewords  # [B, K, C]


class FastFCNContextEncoding(nn.Module):
    """EncNet's context encoding module: encode the global context, then rescale channels with it (SE style)."""

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.encoding_project = FastFCNConvModule(channels, channels, 1)
        self.encoding = nn.Sequential(
            FastFCNEncoding(channels, num_codes), nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True)
        )
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoding(self.encoding_project(hidden_state)).mean(dim=1)  # [B, C]
        gamma = self.fc(encoded).view(hidden_state.shape[0], hidden_state.shape[1], 1, 1)
        return encoded, F.relu_(hidden_state + hidden_state * gamma)


class FastFCNEncHead(FastFCNClassifier):
    """EncNet head: 3x3 bottleneck, context encoding, classifier; plus the SE branch that predicts present classes."""

    def __init__(self, in_channels: int, channels: int, num_labels: int, num_codes: int, use_se_loss: bool,
                 dropout: float) -> None:  # fmt: skip
        super().__init__(channels, num_labels, dropout)
        self.bottleneck = FastFCNConvModule(in_channels, channels, 3, padding=1)
        self.enc_module = FastFCNContextEncoding(channels, num_codes)
        self.se_layer = nn.Linear(channels, num_labels) if use_se_loss else None

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoded, hidden_state = self.enc_module(self.bottleneck(hidden_state))
        se_logits = self.se_layer(encoded) if self.se_layer is not None else None
        return self.classify(hidden_state), se_logits


class FastFCNFCNHead(FastFCNClassifier):
    """Fully convolutional head: `num_convs` 3x3 convs, optionally fused with its input. Also the auxiliary head."""

    def __init__(self, in_channels: int, channels: int, num_labels: int, num_convs: int, concat_input: bool,
                 dropout: float) -> None:  # fmt: skip
        super().__init__(channels, num_labels, dropout)
        if num_convs == 0 and in_channels != channels:
            raise ValueError(
                f"An FCN head with no convs needs in_channels == channels, got {in_channels}, {channels}."
            )
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*(FastFCNConvModule(w, channels, 3, padding=1) for w in widths[:-1]))
        self.conv_cat = FastFCNConvModule(in_channels + channels, channels, 3, padding=1) if concat_input else None

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        output = self.convs(hidden_state)
        if self.conv_cat is not None:
            output = self.conv_cat(torch.cat([hidden_state, output], dim=1))
        return self.classify(output)


# --------------------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------------------


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (conv.kernel_size[0] // 2), dilation * (conv.kernel_size[1] // 2))


def _apply_contracted_dilations(backbone: nn.Module) -> None:
    """mmsegmentation's FastFCN backbone: layer3/layer4 keep their stride but dilate by 2/4, first block halved.

    timm cannot express "stride 2 and dilation"; the 3x3 convs are patched in place (their weights are unchanged).
    """
    for stage_name, dilation in (("layer3", 2), ("layer4", 4)):
        for index, block in enumerate(getattr(backbone, stage_name)):
            block_dilation = dilation // 2 if index == 0 else dilation
            if hasattr(block, "conv3"):  # Bottleneck: the 3x3 conv is conv2
                _set_dilation(block.conv2, block_dilation)
            else:  # BasicBlock: both convs are 3x3 (timm dilates the first with the previous dilation)
                _set_dilation(block.conv1, dilation // 2 if index == 0 else dilation)
                _set_dilation(block.conv2, dilation)


def build_backbone(config: FastFCNConfig) -> nn.Module:
    """The timm `features_only` backbone of `config`, returning the stride-8/16/32 levels (random weights).

    Its `input_size_multiple` attribute tells `backbone_features` how to pad inputs: ResNets take any size as they
    are (and match mmsegmentation's checkpoints unpadded); other families get multiples of `SIZE_MULTIPLE`.
    """
    output_stride = {"d8": 8, "d16": 16}.get(config.backbone_layout)
    kwargs = {"output_stride": output_stride} if output_stride else {}
    backbone = timm.create_model(
        config.backbone.split(".")[0],
        pretrained=False,
        features_only=True,
        out_indices=tuple(config.backbone_out_indices),
        in_chans=config.num_channels,
        **kwargs,
        **timm_backbone_kwargs(config.backbone),
    )
    if config.backbone_layout == "d32_mmseg":
        _apply_contracted_dilations(backbone)
    backbone.input_size_multiple = 1 if timm_family(config.backbone) == "resnet" else SIZE_MULTIPLE
    return backbone


def backbone_features(backbone: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's levels as NCHW maps of ceil(H / r) x ceil(W / r), for an input of any size H x W.

    Patch embeddings and attention windows need sides that are multiples of the coarsest reduction, so the input is
    zero-padded at the bottom and right to `backbone.input_size_multiple` and every level is cropped back to the
    input's extent: levels stay aligned with its top-left corner, as a ResNet's are. NHWC levels (Swin) become NCHW.
    """
    size_multiple = getattr(backbone, "input_size_multiple", 1)
    height, width = pixel_values.shape[-2:]
    pad_bottom, pad_right = (-height % size_multiple, -width % size_multiple) if size_multiple > 1 else (0, 0)
    if pad_bottom or pad_right:
        pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
    try:
        features = backbone(pixel_values)
    except (RuntimeError, IndexError, ValueError, AssertionError) as error:
        if isinstance(error, torch.OutOfMemoryError):
            raise
        # Some timm models pass the config-time probe on the meta device but index fixed-size tables at run time
        # (MViTv2's relative positions); say which backbone failed on what, instead of a bare IndexError.
        name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture", type(backbone).__name__)
        raise ValueError(
            f"The timm backbone `{name}` failed on a {tuple(pixel_values.shape[-2:])} input: {error}. If it only "
            f"works at its pretraining resolution, choose another backbone: FastFCN feeds images of any size "
            f"(padded to a multiple of {size_multiple})."
        ) from error
    if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
        features = [level.permute(0, 3, 1, 2) for level in features]  # [B, h, w, C] -> [B, C, h, w]
    if pad_bottom or pad_right:
        padded_height, padded_width = pixel_values.shape[-2:]
        features = [
            level[..., : math.ceil(height * level.shape[-2] / padded_height),
                  : math.ceil(width * level.shape[-1] / padded_width)]
            for level in features
        ]  # fmt: skip
    return features


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


class FastFCNPreTrainedModel(PreTrainedModel):
    config: FastFCNConfig
    config_class = FastFCNConfig
    base_model_prefix = "fastfcn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules: list[str] = []
    # Trainer must not rescale our loss by its token count (it would count ignored pixels): we average ourselves.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """mmsegmentation's scheme: Kaiming convs, unit BN, N(0, 0.01) classifiers.

        Only `transformers.initialization` helpers are used: they skip tensors loaded from a checkpoint, so
        `from_pretrained` never re-randomises weights.
        """
        if hasattr(module, "init_non_persistent_buffers"):
            # timm modules whose buffers are computed, not saved (Swin's relative position index and attention
            # mask): `from_pretrained` builds on the meta device, so they must be recomputed, as TimmBackbone does.
            module.init_non_persistent_buffers()
        if isinstance(module, FastFCNClassifierConv):
            init.normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d | nn.SyncBatchNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:  # e.g. Swin's patch merging
                init.zeros_(module.bias)
        elif isinstance(module, FastFCNEncoding):
            bound = 1.0 / (module.num_codes * module.channels) ** 0.5
            init.uniform_(module.codewords, -bound, bound)
            init.uniform_(module.scale, -1.0, 0.0)


class FastFCNForSemanticSegmentation(FastFCNPreTrainedModel):
    """FastFCN (or a dilated baseline) for semantic segmentation; logits at stride 8 of the input."""

    def __init__(self, config: FastFCNConfig) -> None:
        super().__init__(config)
        self.backbone = build_backbone(config)
        channels = self.backbone.feature_info.channels()  # stride-8, -16, -32 levels
        if config.neck == "jpu":
            self.neck = FastFCNJointPyramidUpsampling(
                channels, config.jpu_channels, config.jpu_dilations, config.align_corners
            )
            head_in = config.jpu_channels * len(config.jpu_dilations)
        else:
            self.neck = None
            head_in = channels[-1]
        self.decode_head = self._build_decode_head(config, head_in)
        self.auxiliary_head = (
            FastFCNFCNHead(channels[1], config.auxiliary_channels, config.num_labels, 1, False,
                           config.classifier_dropout)
            if config.use_auxiliary_head
            else None
        )  # fmt: skip
        self.post_init()

    @staticmethod
    def _build_decode_head(config: FastFCNConfig, in_channels: int) -> nn.Module:
        common = {"in_channels": in_channels, "channels": config.head_channels, "num_labels": config.num_labels,
                  "dropout": config.classifier_dropout}  # fmt: skip
        if config.decode_head == "aspp":
            return FastFCNASPPHead(**common, dilations=config.aspp_dilations, align_corners=config.align_corners)
        if config.decode_head == "psp":
            return FastFCNPyramidPoolingHead(**common, pool_scales=config.pool_scales,
                                             align_corners=config.align_corners)  # fmt: skip
        if config.decode_head == "enc":
            return FastFCNEncHead(**common, num_codes=config.num_codes, use_se_loss=config.use_se_loss)
        return FastFCNFCNHead(**common, num_convs=config.fcn_num_convs, concat_input=config.fcn_concat_input)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4:
            hint = " Add a batch dimension with `pixel_values[None]`." if pixel_values.ndim == 3 else ""
            raise ValueError(
                f"`pixel_values` must be 4-D [batch, channels, height, width], got shape {tuple(pixel_values.shape)}."
                f"{hint} Use FastFCNImageProcessor to prepare images."
            )
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[1]} channels but the model expects {self.config.num_channels}"
                f" (shape {tuple(pixel_values.shape)}). Convert images to RGB, e.g. with FastFCNImageProcessor."
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images (see `FastFCNImageProcessor`). Any height and width.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Ground-truth class indices; `config.semantic_loss_ignore_index` marks pixels to ignore. The logits are
            upsampled to the labels' size for the loss.

        Example:

        ```python
        >>> import torch
        >>> from fastfcn_hub import create_model
        >>> model = create_model("fastfcn_r18_jpu_psp").eval()
        >>> model(torch.randn(1, 3, 250, 490)).logits.shape
        torch.Size([1, 19, 32, 62])
        ```
        """
        self._check_pixel_values(pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        features = backbone_features(self.backbone, pixel_values)  # stride 8, 16, 32 (8, 8, 8 when dilated)
        head_input = self.neck(features) if self.neck is not None else features[-1]
        se_logits = None
        if self.config.decode_head == "enc":
            logits, se_logits = self.decode_head(head_input)
        else:
            logits = self.decode_head(head_input)

        loss = None
        if labels is not None:
            auxiliary_logits = self.auxiliary_head(features[1]) if self.auxiliary_head is not None else None
            loss = self.compute_loss(logits, labels, auxiliary_logits, se_logits)

        if output_hidden_states:  # an optimised neck may hand its branches to the head unconcatenated
            head_state = torch.cat(head_input, dim=1) if isinstance(head_input, list) else head_input
            hidden_states = (*features, head_state)
        else:
            hidden_states = None
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def compute_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        auxiliary_logits: torch.Tensor | None = None,
        se_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode CE + `auxiliary_loss_weight` x auxiliary CE + `se_loss_weight` x SE BCE, as in mmsegmentation."""
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"`labels` must be [batch, height, width] with batch {logits.shape[0]}, got {tuple(labels.shape)}."
            )
        labels = labels.long()
        loss = self._cross_entropy(logits, labels)
        if auxiliary_logits is not None:
            loss = loss + self.config.auxiliary_loss_weight * self._cross_entropy(auxiliary_logits, labels)
        if se_logits is not None:
            loss = loss + self.config.se_loss_weight * F.binary_cross_entropy_with_logits(
                se_logits, self._present_classes(labels, se_logits.shape[1]).to(se_logits.dtype)
            )
        return loss

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        upsampled = resize(logits, labels.shape[-2:], self.config.align_corners)
        ignore_index = self.config.semantic_loss_ignore_index
        if self.config.loss_average == "valid":
            return F.cross_entropy(upsampled, labels, ignore_index=ignore_index)
        return F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="sum") / labels.numel()

    @staticmethod
    def _present_classes(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
        """SE-loss target: 1 for each class present in an image (ignored and out-of-range values excluded)."""
        flat = labels.flatten(1)
        valid = (flat >= 0) & (flat < num_labels)
        offsets = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1) * num_labels
        counts = torch.bincount((flat + offsets)[valid], minlength=labels.shape[0] * num_labels)
        return (counts.view(labels.shape[0], num_labels) > 0).long()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; for our released hub repos, an offline failure says what to do."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as error:
            try:
                from .variants import VARIANTS
            except ImportError:  # running as trust_remote_code, without the package
                raise error from None
            variant = next((v for v in VARIANTS if v.hub_repo_id == str(pretrained_model_name_or_path)), None)
            if variant is None:
                raise
            raise OSError(
                f"Could not load {variant.hub_repo_id!r} (offline, or not in the Hugging Face cache). Connect once to "
                "download it, or convert mmsegmentation's original checkpoint locally and load that directory: "
                f"`fastfcn-hub convert {variant.mmseg_checkpoint} ./{variant.name}`."
            ) from error

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus a `preprocessor_config.json` derived from the config when the
        directory has none, so that `AutoImageProcessor` and `pipeline` load the directory as it is."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not (Path(save_directory) / "preprocessor_config.json").exists():
            from .image_processing_fastfcn import FastFCNImageProcessor

            FastFCNImageProcessor.from_config(self.config).save_pretrained(save_directory)

    def optimize_for_inference(self, **kwargs) -> FastFCNForSemanticSegmentation:
        """An inference copy: BatchNorm folded, channels_last, CPU kernel fixes; logits within 1e-4 in float32.

        See `fastfcn_hub.optimize.optimize_for_inference` for the options (`compile=True`, `inplace=True`, ...).
        """
        from .optimize import optimize_for_inference

        return optimize_for_inference(self, **kwargs)

    def load_backbone_weights(self, source: str | Path | None = None) -> FastFCNForSemanticSegmentation:
        """Load ImageNet-pretrained timm weights into the backbone, explicitly and after initialisation.

        `source=None` downloads the weights of `config.backbone` (a timm name, optionally with a tag such as
        `resnet50c.gluon_in1k`) from the Hugging Face Hub; a path loads a local timm `.pth` / `.safetensors` file
        (a classifier state dict; its `fc.*` keys are dropped). Returns `self`.
        """
        overlay = {"file": str(source)} if source is not None else None
        if source is not None and not Path(source).is_file():
            raise FileNotFoundError(f"No backbone weights file at {source}.")
        try:
            pretrained = timm.create_model(
                self.config.backbone,
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                features_only=True,
                out_indices=tuple(self.config.backbone_out_indices),
                in_chans=self.config.num_channels,
            )
        except Exception as error:
            if source is None:
                raise OSError(
                    f"Could not download ImageNet weights for `{self.config.backbone}` (offline, or no pretrained "
                    "tag). Download them once where you have network access, or pass a local file: "
                    "`model.load_backbone_weights('resnet50c.safetensors')`."
                ) from error
            raise
        self.backbone.load_state_dict(pretrained.state_dict(), strict=True)
        return self


FastFCN = FastFCNForSemanticSegmentation

__all__ = [
    "FastFCN",
    "FastFCNASPPHead",
    "FastFCNContextEncoding",
    "FastFCNEncHead",
    "FastFCNEncoding",
    "FastFCNFCNHead",
    "FastFCNForSemanticSegmentation",
    "FastFCNJointPyramidUpsampling",
    "FastFCNPreTrainedModel",
    "FastFCNPyramidPoolingHead",
    "backbone_features",
    "build_backbone",
]
