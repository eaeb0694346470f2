"""`optimize_for_inference`: every rewrite keeps float32 logits within 1e-4 of the plain model."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastfcn_hub import create_model
from fastfcn_hub.modeling_fastfcn import FastFCNConvModule
from fastfcn_hub.optimize import (
    ChannelSplitConv2d,
    FactoredASPPHead,
    FactoredPyramidPoolingHead,
    PrePaddedConv2d,
    SubsampledConv2d,
    UpsampledBranchConv,
    optimize_for_inference,
    split_wide_convs,
)


@torch.no_grad()
def randomize_batchnorms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that folding has something to get wrong."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fastfcn_r18_jpu_psp", {}),
        ("fastfcn_r18_jpu_aspp", {}),
        ("fastfcn_r18_jpu_enc", {}),
        ("fastfcn_r18_jpu_psp", {"backbone_layout": "d32_mmseg"}),  # strided + dilated backbone convs
        ("pspnet_r18_d8", {}),
    ],
)
def test_optimized_logits_match_plain_model(name: str, overrides: dict) -> None:
    model = randomize_batchnorms(create_model(name, **overrides).eval())
    keys_before = set(model.state_dict())
    optimized = model.optimize_for_inference()
    pixel_values = torch.randn(1, 3, 128, 224)
    with torch.no_grad():
        expected = model(pixel_values).logits
        actual = optimized(pixel_values.contiguous(memory_format=torch.channels_last)).logits
        contiguous_input = optimized(pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(contiguous_input, expected, rtol=1e-4, atol=1e-4)
    assert count(optimized, nn.BatchNorm2d) == 0  # every conv-BN pair folded
    assert count(model, nn.BatchNorm2d) > 0 and set(model.state_dict()) == keys_before  # the original is untouched
    assert not optimized.training and not any(p.requires_grad for p in optimized.parameters())
    if model.config.neck == "jpu":
        assert count(optimized, PrePaddedConv2d) == 1  # the JPU's dilation-8 depthwise conv
    if model.config.backbone_layout == "d32_mmseg":
        assert count(optimized, SubsampledConv2d) == 1  # layer4.0: stride 2 with dilation 2
    factored = {"psp": FactoredPyramidPoolingHead, "aspp": FactoredASPPHead}.get(model.config.decode_head)
    if factored is not None:
        assert isinstance(optimized.decode_head, factored)


@pytest.mark.parametrize("block_channels", [64, 48])  # 64: the JPU's branch width (no copies); 48: re-sliced
@pytest.mark.parametrize(
    "name", ["fastfcn_r18_jpu_enc", "fastfcn_r18_jpu_psp", "fastfcn_r18_jpu_aspp", "deeplabv3_r18_d8"]
)
def test_wide_conv_split_matches_plain_model(name: str, block_channels: int) -> None:
    """The R-18 models are too narrow for the default 512-channel blocks, so split them at 64 or 48 channels."""
    model = randomize_batchnorms(create_model(name).eval())
    optimized = optimize_for_inference(model, split_wide=False)
    assert count(optimized, ChannelSplitConv2d) == 0
    assert split_wide_convs(optimized, block_channels=block_channels) > 0
    assert count(optimized, ChannelSplitConv2d) > 0
    pixel_values = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        expected = model(pixel_values, output_hidden_states=True)
        actual = optimized(pixel_values.contiguous(memory_format=torch.channels_last), output_hidden_states=True)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-4)
    # the head input, unconcatenated inside, still comes out as one map
    torch.testing.assert_close(actual.hidden_states[-1], expected.hidden_states[-1], rtol=1e-4, atol=1e-4)
    if model.config.neck == "jpu":
        assert optimized.neck.concat_output is False  # every consumer of the JPU's output takes channel blocks
        assert model.neck.concat_output is True


def test_split_is_skipped_off_the_cpu_by_default() -> None:
    model = create_model("fastfcn_r50_jpu_enc").to("meta")  # large enough to split, but not on the CPU
    assert count(optimize_for_inference(model, fold_batchnorm=False), ChannelSplitConv2d) == 0
    assert count(optimize_for_inference(model, fold_batchnorm=False, split_wide=True), ChannelSplitConv2d) > 0


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "bias"), [(3, 1, 1, True), (3, 2, 2, False), (1, 1, 1, True)]
)
def test_channel_split_conv_equals_conv(kernel: int, stride: int, dilation: int, bias: bool, memory_format) -> None:
    conv = nn.Conv2d(10, 6, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, bias=bias)
    split = ChannelSplitConv2d(conv, block_channels=4)
    assert split.widths == [4, 3, 3]
    x = torch.randn(2, 10, 17, 23).contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected = conv(x)
        torch.testing.assert_close(split(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split(list(x.split([4, 3, 3], dim=1))), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split(list(x.split([5, 5], dim=1))), expected, rtol=1e-5, atol=1e-5)
    assert ChannelSplitConv2d.applies_to(nn.Conv2d(1024, 8, 3, padding=1))
    assert not ChannelSplitConv2d.applies_to(nn.Conv2d(512, 8, 3, padding=1))  # one block already
    assert not ChannelSplitConv2d.applies_to(nn.Conv2d(1024, 8, 1))  # 1x1: one GEMM is faster than four
    assert not ChannelSplitConv2d.applies_to(nn.Conv2d(1024, 1024, 3, padding=1, groups=1024))  # depthwise


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("size", "bins"), [((13, 21), [1, 2, 3, 6]), ((7, 5), [1, 3]), ((1, 9), [1])])
def test_upsampled_branch_conv_equals_conv_of_upsampled_maps(
    size: tuple[int, int], bins: list[int], align_corners: bool
) -> None:
    """The factored fusion conv against the plain one: concat of a dense map and upsampled pooled maps, BN unfolded."""
    dense_channels, channels = 6, 4
    fusion = randomize_batchnorms(FastFCNConvModule(dense_channels + len(bins) * channels, 5, 3, padding=1)).eval()
    dense = torch.randn(2, dense_channels, *size)
    pooled = [torch.randn(2, channels, min(b, size[0]), min(b, size[1])) for b in bins]
    upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=align_corners) for p in pooled]
    parts = [slice(dense_channels + i * channels, dense_channels + (i + 1) * channels) for i in range(len(bins))]
    assert UpsampledBranchConv.applies_to(fusion)
    factored = UpsampledBranchConv(fusion, slice(0, dense_channels), parts, align_corners)
    with torch.no_grad():
        expected = fusion(torch.cat([dense, *upsampled], dim=1))
        torch.testing.assert_close(factored(dense, pooled), expected, rtol=1e-5, atol=1e-5)
    assert not UpsampledBranchConv.applies_to(FastFCNConvModule(8, 4, 3, padding=2, dilation=2))
    assert not UpsampledBranchConv.applies_to(FastFCNConvModule(8, 4, 1))


@pytest.mark.parametrize(("stride", "dilation", "size"), [(2, 2, (15, 22)), (2, 4, (16, 17)), (3, 3, (20, 31))])
def test_subsampled_conv_equals_strided_dilated_conv(stride: int, dilation: int, size: tuple[int, int]) -> None:
    conv = nn.Conv2d(6, 5, 3, stride=stride, padding=dilation, dilation=dilation, bias=True)
    assert SubsampledConv2d.applies_to(conv)
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        torch.testing.assert_close(SubsampledConv2d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_rewrites_skip_convs_they_do_not_cover() -> None:
    assert not SubsampledConv2d.applies_to(nn.Conv2d(4, 4, 3, stride=2, padding=1))  # not dilated
    assert not SubsampledConv2d.applies_to(nn.Conv2d(4, 4, 3, stride=2, padding=3, dilation=3))  # 3 % 2 != 0
    assert not PrePaddedConv2d.applies_to(nn.Conv2d(4, 4, 3, padding=8, dilation=8))  # not depthwise
    assert not PrePaddedConv2d.applies_to(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4))  # small padding


def test_pre_padded_depthwise_conv_matches_implicit_padding() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=8, dilation=8, groups=8, bias=True)
    x = torch.randn(1, 8, 20, 33)
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight, conv.bias, padding=8, dilation=8, groups=8)
        torch.testing.assert_close(PrePaddedConv2d(conv)(x), expected, rtol=1e-5, atol=1e-6)


def test_inplace_optimization_returns_the_same_model() -> None:
    model = create_model("fastfcn_r18_jpu_psp")
    assert optimize_for_inference(model, inplace=True) is model
    assert count(model, nn.BatchNorm2d) == 0 and not model.training


@pytest.mark.slow
def test_compiled_model_matches_plain_model() -> None:
    """`compile=True` (torch.compile over the rewritten model) keeps the logits; needs a C++ compiler on CPU."""
    model = randomize_batchnorms(create_model("fastfcn_r18_jpu_psp").eval())
    compiled = model.optimize_for_inference(compile=True)
    pixel_values = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        expected = model(pixel_values).logits
        actual = compiled(pixel_values.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


_PAGE_FAULT_PROBE = """
import resource, sys
import torch
from fastfcn_hub.optimize import reuse_freed_cpu_memory

def faults_of_a_fresh_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(32 * 2**20)  # 128 MB, written and freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_fresh_tensor()
default = faults_of_a_fresh_tensor()
applied = reuse_freed_cpu_memory()
faults_of_a_fresh_tensor()  # grows the heap once
print(applied, default, faults_of_a_fresh_tensor())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_cpu_memory_stops_page_faults_on_repeated_allocations() -> None:
    """In a child process (the setting is process-wide): a reallocated 128 MB tensor no longer faults its pages."""
    result = subprocess.run([sys.executable, "-c", _PAGE_FAULT_PROBE], capture_output=True, text=True, check=True)
    applied, default, reused = result.stdout.split()
    if applied != "True":
        pytest.skip("this C library has no glibc mallopt")
    if int(default) < 1_000:  # 32768 for 4 KB pages
        pytest.skip(f"fresh tensors barely fault here ({default} faults; transparent huge pages?)")
    assert int(reused) < int(default) / 10
