"""The JPU beyond ResNet (issue 7): ConvNeXt, EfficientNet, Swin and MobileNetV3 backbones under the JPU and heads.

One model per backbone is built once and shared (building ConvNeXt-T / Swin-T costs seconds); each backbone gets a
different head so that all three heads meet a non-ResNet family here (test_modeling runs every variant forward).
"""

import json
import math
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

from fastfcn_hub import (
    FastFCN,
    FastFCNConfig,
    FastFCNImageProcessor,
    create_model,
    get_variant,
    list_models,
    variant_config,
)
from fastfcn_hub.configuration_fastfcn import IMAGENET_MEAN, IMAGENET_STD, timm_feature_info

BACKBONES = {  # variant family -> (timm model, head used in the shared model)
    "convnext_tiny": ("convnext_tiny", "aspp"),
    "efficientnet_b3": ("efficientnet_b3", "psp"),
    "swin_tiny": ("swin_tiny_patch4_window7_224", "enc"),
    "mobilenetv3_large": ("mobilenetv3_large_100", "enc"),
}
HEIGHT, WIDTH = 250, 490  # sides that are not multiples of 32 (nor of Swin's 4 x 7 windows)
_MODELS: dict[str, FastFCN] = {}


def shared_model(family: str) -> FastFCN:
    if family not in _MODELS:
        _MODELS[family] = create_model(f"fastfcn_{family}_jpu_{BACKBONES[family][1]}")
    return _MODELS[family]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    """Each shared model saved once (weights, config, preprocessor_config.json)."""
    directories = {}
    for family in BACKBONES:
        directory = tmp_path_factory.mktemp(family)
        shared_model(family).save_pretrained(directory)
        directories[family] = str(directory)
    return directories


def test_variants_are_listed_with_every_head_and_no_segmentation_weights():
    for family, (backbone, _) in BACKBONES.items():
        names = list_models(f"fastfcn_{family}_jpu_*")
        assert names == [f"fastfcn_{family}_jpu_{head}" for head in ("aspp", "psp", "enc")]
        for name in names:
            variant = get_variant(name)
            assert variant.config["backbone"] == backbone and not variant.released and variant.hub_repo_id is None
            assert "not pretrained on segmentation data" in variant.description
            assert name in list_models(released=False)
    with pytest.raises(ValueError, match="has no released weights"):
        create_model("fastfcn_swin_tiny_jpu_psp", pretrained=True)


@pytest.mark.parametrize("family", BACKBONES)
def test_levels_are_chosen_by_reduction_with_their_widths(family):
    model = shared_model(family)
    channels, reductions, _ = timm_feature_info(model.config.backbone)
    indices = model.config.backbone_out_indices
    assert [reductions[i] for i in indices] == [8, 16, 32]
    assert model.backbone.feature_info.channels() == [channels[i] for i in indices]
    assert [layer[0].conv.in_channels for layer in model.neck.conv_layers] == [channels[i] for i in indices]
    assert model.auxiliary_head.convs[0].conv.in_channels == channels[indices[1]]
    assert model.config.backbone_layout == "d32"


@pytest.mark.parametrize("family", BACKBONES)
def test_forward_on_any_size_gives_aligned_stride_8_logits(family):
    model = shared_model(family).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, HEIGHT, WIDTH), output_hidden_states=True)
    assert outputs.logits.shape == (1, 19, math.ceil(HEIGHT / 8), math.ceil(WIDTH / 8))
    levels = outputs.hidden_states[:3]  # NCHW for every family (Swin's NHWC levels are permuted)
    for level, reduction, width in zip(levels, (8, 16, 32), model.backbone.feature_info.channels()):
        assert level.shape == (1, width, math.ceil(HEIGHT / reduction), math.ceil(WIDTH / reduction))
    assert torch.isfinite(outputs.logits).all()


def test_padding_never_shows_in_the_features():
    """Levels of an input padded inside the forward equal those of the same image pasted on a larger zero canvas."""
    model = shared_model("convnext_tiny").eval()
    image = torch.randn(1, 3, 100, 140)  # padded to 128 x 160 inside
    canvas = torch.zeros(1, 3, 128, 160)
    canvas[..., :100, :140] = image
    with torch.no_grad():
        cropped = model(image, output_hidden_states=True).hidden_states[:3]
        full = model(canvas, output_hidden_states=True).hidden_states[:3]
    for level, reference in zip(cropped, full):
        assert level.shape[-2:] == (
            math.ceil(100 * reference.shape[-2] / 128),
            math.ceil(140 * reference.shape[-1] / 160),
        )
        torch.testing.assert_close(level, reference[..., : level.shape[-2], : level.shape[-1]], rtol=0, atol=0)


@pytest.mark.parametrize("family", BACKBONES)
def test_loss_and_gradients_reach_the_backbones_first_layer(family):
    model = shared_model(family).train()
    labels = torch.randint(0, 19, (2, 70, 100))
    labels[:, :10] = 255  # ignored pixels
    outputs = model(torch.randn(2, 3, 70, 100), labels=labels)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss) and outputs.loss > 0
    outputs.loss.backward()
    first_name, first = next(iter(model.backbone.named_parameters()))  # the stem / patch-embedding convolution
    assert first.grad is not None and first.grad.abs().sum() > 0, first_name
    without_gradient = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_gradient == []
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("family", BACKBONES)
def test_save_load_round_trip_is_exact(family, saved):
    model = shared_model(family).eval()
    reloaded = FastFCN.from_pretrained(saved[family]).eval()
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert list(state) == list(reloaded_state)
    assert all(key.startswith(("backbone.", "neck.", "decode_head.", "auxiliary_head.")) for key in state)
    for key, tensor in state.items():
        assert torch.equal(tensor, reloaded_state[key]), key
    # Computed buffers (Swin's relative position index) are rebuilt, not left as meta-device garbage.
    for (key, buffer), (_, reloaded_buffer) in zip(model.named_buffers(), reloaded.named_buffers()):
        assert torch.equal(buffer, reloaded_buffer), key
    # Same weights, same logits; not bit for bit, as loaded tensors sit at other memory alignments (vector kernels
    # then sum in another order: differences of 1e-8 were seen).
    pixel_values = torch.randn(1, 3, 90, 150)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=1e-5, atol=1e-6)
    assert {**reloaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()


@pytest.mark.parametrize("family", BACKBONES)
def test_pipeline_segments_an_image_from_the_saved_directory(family, saved):
    segmenter = pipeline("image-segmentation", model=saved[family])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8))
    results = segmenter(image)
    model, processor = segmenter.model, FastFCNImageProcessor.from_pretrained(saved[family])
    with torch.no_grad():
        expected = processor.post_process_semantic_segmentation(model(**processor(image)), target_sizes=[(90, 150)])
    assert {result["label"] for result in results} == {model.config.id2label[i] for i in expected[0].unique().tolist()}
    assert all(result["mask"].size == (150, 90) for result in results)


@pytest.mark.parametrize("family", BACKBONES)
def test_backbone_pretrained_loads_a_local_timm_file(family, tmp_path):
    backbone = BACKBONES[family][0]
    source = timm.create_model(backbone).state_dict()  # a classifier checkpoint, as timm publishes them
    path = tmp_path / f"{backbone}.safetensors"
    save_file({key: tensor.contiguous() for key, tensor in source.items()}, path)
    model = create_model(f"fastfcn_{family}_jpu_psp", backbone_pretrained=path)
    loaded = model.backbone.state_dict()
    # timm's feature wrapper flattens nested sequentials: `stages.0.x` is saved as `stages_0.x`.
    for key, tensor in loaded.items():
        source_key = key if key in source else re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", key)
        assert torch.equal(tensor, source[source_key]), key


def test_backbone_pretrained_offline_says_what_to_do():
    with pytest.raises(OSError, match="pass a local file"):
        create_model("fastfcn_mobilenetv3_large_jpu_psp", backbone_pretrained=True)


def test_normalisation_comes_from_the_backbones_pretrained_weights(tmp_path):
    # The default tags of the four families were trained on ImageNet statistics; the mmseg ResNets keep them exactly.
    for family, (backbone, _) in BACKBONES.items():
        assert tuple(shared_model(family).config.image_mean) == IMAGENET_MEAN
    for name in (
        "fastfcn_r50_jpu_psp.cityscapes_4xb2",
        "fastfcn_r50_jpu_enc.ade20k_80k",
        "deeplabv3_r50_d8.cityscapes",
    ):
        config = variant_config(name)
        assert (tuple(config.image_mean), tuple(config.image_std)) == (IMAGENET_MEAN, IMAGENET_STD)
    # A tag picks other weights and their statistics: MIIL's ImageNet-21k MobileNetV3 takes raw [0, 1] values.
    model = create_model("fastfcn_mobilenetv3_large_jpu_psp", backbone="mobilenetv3_large_100.miil_in21k_ft_in1k")
    assert (tuple(model.config.image_mean), tuple(model.config.image_std)) == ((0.0,) * 3, (1.0,) * 3)
    model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (stored["image_mean"], stored["image_std"]) == ([0.0] * 3, [1.0] * 3)
    white = np.full((8, 8, 3), 255, dtype=np.uint8)
    assert torch.allclose(FastFCNImageProcessor.from_pretrained(tmp_path)(white)["pixel_values"], torch.ones(1))
    # Explicit statistics win, and a saved config keeps what it saved, whatever timm says about the backbone.
    config = FastFCNConfig(backbone="resnet50d.ra4_e3600_r224_in1k", backbone_layout="d32", image_mean=IMAGENET_MEAN)
    assert tuple(config.image_mean) == IMAGENET_MEAN and tuple(config.image_std) == (0.5, 0.5, 0.5)
    config.save_pretrained(tmp_path / "config")
    reloaded = FastFCNConfig.from_pretrained(tmp_path / "config")
    assert tuple(reloaded.image_mean) == IMAGENET_MEAN and tuple(reloaded.image_std) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "kwargs, messages",
    [
        # no stride-8 level: the error lists what the backbone offers
        ({"backbone": "vit_small_patch16_224"}, ["no feature level at reduction 8", "[0] reduction 16 (384 ch)"]),
        ({"backbone": "levit_128"}, ["reduction 8", "[2] reduction 64 (384 ch)"]),
        # a pyramid that only takes window multiples or its pretraining size
        ({"backbone": "maxvit_tiny_rw_224"}, ["inputs of any size", "96x160"]),
        ({"backbone": "coat_lite_tiny"}, ["inputs of any size", "doesn't match model (224)"]),
        # ResNet-only layouts
        ({"backbone": "convnext_tiny", "backbone_layout": "d32_mmseg"}, ["only works with timm ResNets", "'d32'"]),
        ({"backbone": "swin_tiny_patch4_window7_224", "backbone_layout": "d8", "neck": None}, ["timm ResNets"]),
        ({"backbone": "efficientnet_b3", "backbone_layout": "d16", "neck": None}, ["efficientnet model"]),
        # levels that are not at reductions 8 / 16 / 32, pretrained weights timm does not have
        ({"backbone": "convnext_tiny", "backbone_out_indices": (0, 1, 2)}, ["[3] reduction 32 (768 ch)"]),
        ({"backbone": "convnext_tiny", "backbone_out_indices": (1, 2, 7)}, ["reductions 8, 16 and 32"]),
        ({"backbone": "swin_tiny_patch4_window7_224.no_such_tag"}, ["swin_tiny_patch4_window7_224.ms_in1k"]),
        ({"backbone": "convnext_tiny", "num_channels": 4}, ["image_mean", "4 values"]),
    ],
)
def test_unusable_backbones_are_refused_at_config_time(kwargs, messages):
    with pytest.raises(ValueError) as error:
        FastFCNConfig(**kwargs)
    for message in messages:
        assert message in str(error.value)


def test_a_model_without_features_only_is_refused_at_config_time(monkeypatch):
    def no_features(*args, **kwargs):
        raise RuntimeError("features_only not implemented for Demo models")

    monkeypatch.setattr(timm, "create_model", no_features)
    timm_feature_info.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"cannot build it with `features_only=True` \(features_only not impl"):
            FastFCNConfig(backbone="regnety_002")
    finally:
        timm_feature_info.cache_clear()


def test_other_timm_pyramids_work_too():
    """Not in the variant table, yet accepted: channels-last output (MambaOut) and a second transformer (PVT-v2)."""
    for backbone in ("pvt_v2_b0", "mambaout_femto"):
        config = FastFCNConfig(backbone=backbone, jpu_channels=32, head_channels=32, auxiliary_channels=16)
        model = FastFCN(config).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 70, 100)).logits.shape == (1, 19, 9, 13)


def test_a_backbone_that_fails_at_run_time_names_itself():
    """MViTv2 passes the meta-device probe but indexes fixed-size tables on real inputs: the error says so."""
    config = FastFCNConfig(backbone="mvitv2_tiny", jpu_channels=32, head_channels=32, auxiliary_channels=16)
    model = FastFCN(config).eval()
    with pytest.raises(ValueError, match=r"timm backbone `mvitv2_tiny` failed on a \(256, 512\) input"):
        model(torch.randn(1, 3, 250, 490))
