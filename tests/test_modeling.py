"""The model family: every variant builds and runs, losses and gradients flow, bad inputs fail clearly."""

import math

import pytest
import torch

from fastfcn_hub import FastFCNConfig, FastFCNForSemanticSegmentation, FastFCNImageProcessor, create_model, list_models
from fastfcn_hub.variants import VARIANTS

LIGHT = [name for name in list_models() if "_r18_" in name]
HEIGHT, WIDTH = 250, 490  # sides that are not multiples of 32


def test_every_named_variant_is_listed():
    names = list_models()
    assert len(names) == len(set(names)) == len(VARIANTS)
    # every row of the reference table, both released batch settings of the JPU models, ADE20K, R-101, light
    for expected in (
        "deeplabv3_r50_d8.cityscapes",
        "pspnet_r50_d8.cityscapes",
        "encnet_r50_d8.cityscapes",
        *(f"fastfcn_r50_jpu_{h}.cityscapes_4xb{b}" for h in ("aspp", "psp", "enc") for b in (2, 4)),
        *(f"fastfcn_r50_jpu_{h}.ade20k_{i}" for h in ("aspp", "psp", "enc") for i in ("80k", "160k")),
        *(f"fastfcn_r101_jpu_{h}" for h in ("aspp", "psp", "enc")),
        *(f"fastfcn_r18_jpu_{h}" for h in ("aspp", "psp", "enc")),
    ):
        assert expected in names
    assert list_models("*jpu_psp*") == [n for n in names if "jpu_psp" in n]
    assert set(list_models(released=True)) == {v.name for v in VARIANTS if v.released}


@pytest.mark.parametrize("name", list_models())
def test_variant_builds_and_segments_any_size(name):
    model = create_model(name).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, HEIGHT, WIDTH))
    stride = model.config.output_stride
    assert stride == 8
    assert outputs.logits.shape == (1, model.config.num_labels, math.ceil(HEIGHT / 8), math.ceil(WIDTH / 8))
    masks = FastFCNImageProcessor.from_config(model.config).post_process_semantic_segmentation(
        outputs, target_sizes=[(HEIGHT, WIDTH)]
    )
    assert masks[0].shape == (HEIGHT, WIDTH)
    assert masks[0].dtype == torch.int64
    assert 0 <= int(masks[0].min()) and int(masks[0].max()) < model.config.num_labels


def test_dataset_labels_follow_the_variant():
    assert create_model("fastfcn_r50_jpu_psp.ade20k_80k").config.num_labels == 150
    config = create_model("fastfcn_r18_jpu_psp").config
    assert config.num_labels == 19 and config.id2label[0] == "road" and config.id2label[18] == "bicycle"


@pytest.mark.parametrize("name", LIGHT)
def test_loss_and_gradients_reach_the_first_conv(name):
    model = create_model(name).train()
    pixel_values = torch.randn(2, 3, 96, 130)
    labels = torch.randint(0, 19, (2, 96, 130))
    labels[:, :10] = 255
    outputs = model(pixel_values, labels=labels)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    first_conv = model.backbone.conv1
    first_conv = first_conv[0] if isinstance(first_conv, torch.nn.Sequential) else first_conv
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["fastfcn_r18_jpu_enc", "pspnet_r18_d8"])
def test_eval_forward_is_deterministic(name):
    model = create_model(name).eval()
    pixel_values = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        first, second = model(pixel_values).logits, model(pixel_values).logits
    assert torch.equal(first, second)


def test_loss_is_decode_plus_weighted_auxiliary_and_se_terms():
    model = create_model("fastfcn_r18_jpu_enc").eval()
    pixel_values, labels = torch.randn(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    labels[0, :20] = 255
    with torch.no_grad():
        total = model(pixel_values, labels=labels).loss
        features = model.backbone(pixel_values)
        logits, se_logits = model.decode_head(model.neck(features))
        auxiliary = model.auxiliary_head(features[1])

        def ce(lg):
            up = torch.nn.functional.interpolate(lg, size=(64, 96), mode="bilinear", align_corners=False)
            return torch.nn.functional.cross_entropy(up, labels, ignore_index=255)

        present = torch.stack([torch.bincount(lb[lb != 255], minlength=19)[:19] > 0 for lb in labels]).float()
        se = torch.nn.functional.binary_cross_entropy_with_logits(se_logits, present)
    expected = ce(logits) + 0.4 * ce(auxiliary) + 0.2 * se
    torch.testing.assert_close(total, expected)


def test_loss_average_all_counts_ignored_pixels_as_zero():
    valid_model = create_model("pspnet_r18_d8", use_auxiliary_head=False).eval()
    all_model = create_model("pspnet_r18_d8", use_auxiliary_head=False, loss_average="all").eval()
    all_model.load_state_dict(valid_model.state_dict())
    pixel_values, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 19, (1, 64, 64))
    labels[:, :32] = 255  # half the pixels ignored
    with torch.no_grad():
        valid = valid_model(pixel_values, labels=labels).loss
        everything = all_model(pixel_values, labels=labels).loss
    torch.testing.assert_close(everything, valid / 2)


def test_without_auxiliary_head_there_are_no_auxiliary_weights():
    model = create_model("fastfcn_r18_jpu_psp", use_auxiliary_head=False)
    assert model.auxiliary_head is None
    assert not any(key.startswith("auxiliary_head.") for key in model.state_dict())
    loss = model(torch.randn(2, 3, 64, 64), labels=torch.zeros(2, 64, 64, dtype=torch.long)).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "name, millions",
    [
        # mmsegmentation's counts for the same architectures (auxiliary head included)
        ("fastfcn_r50_jpu_aspp.cityscapes_4xb2", 87.85),
        ("fastfcn_r50_jpu_psp.cityscapes_4xb2", 68.71),
    ],
)
def test_parameter_counts_match_mmsegmentation(name, millions):
    model = create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 4, 64, 64), "channels"),
        ((1, 1, 64, 64), "channels"),
        ((64, 64), "4-D"),
        ((3, 64, 64), "batch dimension"),
        ((1, 1, 3, 64, 64), "4-D"),
    ],
)
def test_bad_pixel_values_are_refused_clearly(shape, message):
    model = create_model("fastfcn_r18_jpu_psp").eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_non_tensor_input_is_refused():
    model = create_model("fastfcn_r18_jpu_psp")
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])


def test_labels_of_the_wrong_shape_are_refused():
    model = create_model("fastfcn_r18_jpu_psp")
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(2, 3, 64, 64), labels=torch.zeros(3, 64, 64, dtype=torch.long))


def test_unknown_variant_suggests_close_matches():
    with pytest.raises(KeyError, match="fastfcn_r50_jpu_psp"):
        create_model("fastfcn_r50_jpu_pspp")
    with pytest.raises(KeyError, match="list_models"):
        create_model("no_such_model_at_all")


def test_architecture_name_alone_picks_its_first_tag():
    assert create_model("fastfcn_r50_jpu_psp").config.num_labels == 19  # cityscapes_4xb2


def test_overrides_change_the_config():
    model = create_model("fastfcn_r18_jpu_aspp", num_labels=5, aspp_dilations=(1, 6, 12, 18))
    assert model.config.num_labels == 5
    assert model.decode_head.conv_seg.out_channels == 5
    assert [m.conv.dilation[0] for m in model.decode_head.aspp_modules] == [1, 6, 12, 18]


def test_contracted_dilation_layout_matches_mmseg_d32():
    backbone = create_model("fastfcn_r50_jpu_psp").backbone
    layer3 = [(b.conv2.stride[0], b.conv2.dilation[0], b.conv2.padding[0]) for b in backbone.layer3]
    layer4 = [(b.conv2.stride[0], b.conv2.dilation[0], b.conv2.padding[0]) for b in backbone.layer4]
    assert layer3 == [(2, 1, 1)] + [(1, 2, 2)] * 5
    assert layer4 == [(2, 2, 2), (1, 4, 4), (1, 4, 4)]
    plain = FastFCNForSemanticSegmentation(FastFCNConfig(backbone="resnet50c", backbone_layout="d32")).backbone
    assert all(b.conv2.dilation == (1, 1) for b in [*plain.layer3, *plain.layer4])


def test_post_init_does_not_reinitialise_a_loaded_backbone(tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.5)
    weights = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(weights))

    model = create_model("fastfcn_r18_jpu_psp", backbone_pretrained=weights)
    ours = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(ours[key], value), key
    # and the weights survive a save / load round trip
    model.save_pretrained(tmp_path / "saved")
    reloaded = FastFCNForSemanticSegmentation.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.backbone.conv1.weight, reference.conv1.weight)


def test_backbone_weights_from_a_missing_file_fail_clearly(tmp_path):
    model = create_model("fastfcn_r18_jpu_psp")
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        model.load_backbone_weights(tmp_path / "no_such.pth")


def test_backbone_weights_offline_say_what_to_do():
    model = create_model("fastfcn_r18_jpu_psp")
    with pytest.raises(OSError, match="local file"):
        model.load_backbone_weights()
