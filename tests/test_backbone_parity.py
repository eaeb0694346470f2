"""timm `resnet50c` / `resnet101c` equal mmsegmentation's ResNetV1c tensor for tensor, in every backbone layout."""

import pytest
import torch

from fastfcn_hub import FastFCNConfig
from fastfcn_hub.modeling_fastfcn import build_backbone

pytestmark = pytest.mark.parity

# mmsegmentation's (strides, dilations) for each of our layouts; contract_dilation=True as in its configs
MMSEG_LAYOUTS = {
    "d32_mmseg": ((1, 2, 2, 2), (1, 1, 2, 4)),
    "d32": ((1, 2, 2, 2), (1, 1, 1, 1)),
    "d16": ((1, 2, 2, 1), (1, 1, 1, 2)),
    "d8": ((1, 2, 1, 1), (1, 1, 2, 4)),
}
STEM = {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3", "stem.4": "conv1.4", "stem.6": "conv1.6",
        "stem.7": "bn1"}  # fmt: skip


@pytest.fixture(scope="module")
def mmseg_resnet():
    from fastfcn_hub.mmseg_reference import import_mmseg

    import_mmseg()  # mmsegmentation is installed by `make test`: a missing reference fails, it never skips
    from mmseg.models.backbones import ResNetV1c

    return ResNetV1c


def _randomise_(module: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


def _to_timm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        prefix = ".".join(key.split(".")[:2])
        renamed[STEM[prefix] + key[len(prefix) :] if prefix in STEM else key] = value
    return renamed


@pytest.mark.parametrize(
    "depth, layout", [(50, "d32_mmseg"), (50, "d32"), (50, "d16"), (50, "d8"), (101, "d32_mmseg"), (101, "d8")]
)
def test_resnet_v1c_equals_mmseg_tensor_for_tensor(mmseg_resnet, depth, layout):
    strides, dilations = MMSEG_LAYOUTS[layout]
    reference = mmseg_resnet(
        depth=depth, strides=strides, dilations=dilations, contract_dilation=True, out_indices=(1, 2, 3)
    )
    _randomise_(reference)
    reference.eval()

    config = FastFCNConfig(backbone=f"resnet{depth}c", backbone_layout=layout, neck="jpu" if "d32" in layout else None)
    ours = build_backbone(config).eval()
    state_dict = _to_timm_keys(reference.state_dict())
    assert set(state_dict) == set(ours.state_dict()), "only the stem names may differ"
    ours.load_state_dict(state_dict, strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())

    pixel_values = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        expected, actual = reference(pixel_values), ours(pixel_values)
    assert len(expected) == len(actual) == 3
    for level_expected, level_actual in zip(expected, actual):
        assert level_expected.shape == level_actual.shape
        torch.testing.assert_close(level_actual, level_expected, atol=1e-5, rtol=1e-5)
