"""FastFCNConfig: documented fields, closed choices checked at config time, JSON round trip."""

import dataclasses
import re

import pytest

from fastfcn_hub import FastFCNConfig
from fastfcn_hub.configuration_fastfcn import BACKBONE_LAYOUTS, DECODE_HEADS


def _own_fields() -> dict[str, object]:
    base = {f.name for f in dataclasses.fields(FastFCNConfig.__mro__[1])}
    return {f.name: f.default for f in dataclasses.fields(FastFCNConfig) if f.name not in base}


def test_every_field_is_documented_with_its_default():
    doc = FastFCNConfig.__doc__
    for name, default in _own_fields().items():
        match = re.search(rf"^\s+{name}(?:, \w+)? \(`[^`]+`, \*optional\*, defaults to (.+?)\):$", doc, re.M)
        assert match, f"field {name} is not documented"
        documented = match.group(1).strip("`")
        if default is None:
            assert documented == "None", name
        elif isinstance(default, float) and documented.startswith("1 / "):
            assert default == pytest.approx(1 / float(documented[4:])), name
        else:
            assert documented.replace('"', "'") == repr(default).replace('"', "'"), (name, documented, default)


def test_defaults_are_mmsegs_fastfcn_psp_on_cityscapes():
    config = FastFCNConfig()
    assert (config.backbone, config.backbone_layout, config.neck, config.decode_head) == (
        "resnet50c",
        "d32_mmseg",
        "jpu",
        "psp",
    )
    assert config.num_labels == 19 and config.id2label[0] == "road" and config.label2id["bicycle"] == 18
    assert config.backbone_out_indices == (2, 3, 4)
    assert (config.auxiliary_loss_weight, config.se_loss_weight, config.semantic_loss_ignore_index) == (0.4, 0.2, 255)
    assert config.output_stride == 8


def test_round_trip_through_json(tmp_path):
    config = FastFCNConfig(decode_head="aspp", num_labels=7, jpu_dilations=(1, 2, 4), align_corners=True)
    config.save_pretrained(tmp_path)
    reloaded = FastFCNConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.num_labels == 7 and list(reloaded.jpu_dilations) == [1, 2, 4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decode_head": "upernet"}, "decode_head='upernet'"),
        ({"backbone_layout": "d4"}, "backbone_layout='d4'"),
        ({"neck": "fpn"}, "neck='fpn'"),
        ({"loss_average": "median"}, "loss_average"),
        ({"backbone_layout": "d8"}, "JPU neck"),
        ({"backbone": "not_a_timm_model"}, "not a timm model"),
        ({"image_mean": (0.5, 0.5)}, "image_mean"),
    ],
)
def test_closed_choices_fail_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FastFCNConfig(**kwargs)


def test_choice_errors_name_the_allowed_values():
    with pytest.raises(ValueError) as error:
        FastFCNConfig(decode_head="upernet")
    for head in DECODE_HEADS:
        assert head in str(error.value)
    with pytest.raises(ValueError) as error:
        FastFCNConfig(backbone_layout="d4")
    for layout in BACKBONE_LAYOUTS:
        assert layout in str(error.value)


def test_dilated_baseline_layouts():
    for layout, stride in (("d8", 8), ("d16", 16)):
        config = FastFCNConfig(backbone_layout=layout, neck=None)
        assert config.output_stride == stride
