"""Converting mmsegmentation checkpoints: the happy path, round trips through transformers, and every error case.

The checkpoints here are made without mmsegmentation: one of our released architectures with random weights, saved
under mmsegmentation's key names and file format (numerical parity against mmseg itself is tests/test_parity_mmseg.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from fastfcn_hub import FastFCN, create_model, variant_config
from fastfcn_hub.cli import main
from fastfcn_hub.conversion import (
    OUTPUT_FILES,
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    infer_variant,
    load_checkpoint,
)
from fastfcn_hub.variants import get_variant

VARIANT = "fastfcn_r50_jpu_psp.cityscapes_4xb2"  # the conversion is per variant; one architecture suffices here
RELEASED_FILE = Path(get_variant(VARIANT).mmseg_checkpoint).name


def to_mmseg_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> mmsegmentation's (the inverse of the stem rename)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.bn1."):
            key = "backbone.stem.7." + key.removeprefix("backbone.bn1.")
        elif key.startswith("backbone.conv1."):
            key = "backbone.stem." + key.removeprefix("backbone.conv1.")
        renamed[key] = value
    return renamed


@pytest.fixture(scope="module")
def reference_model() -> FastFCN:
    torch.manual_seed(0)
    model = FastFCN(variant_config(VARIANT)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a dropped or misplaced buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def mmseg_state_dict(reference_model) -> dict[str, torch.Tensor]:
    return to_mmseg_keys(reference_model.state_dict())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mmseg_state_dict) -> Path:
    """An mmsegmentation-format checkpoint under the released file name."""
    path = tmp_path_factory.mktemp("ckpt") / RELEASED_FILE
    torch.save({"meta": {"mmseg_version": "0.18.0", "CLASSES": ("road",) * 19}, "state_dict": mmseg_state_dict}, path)
    return path


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, checkpoint) -> Path:
    output = tmp_path_factory.mktemp("out") / "converted"
    assert main(["convert", str(checkpoint), str(output)]) == 0
    return output


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------------------------------------------
# Happy path
# --------------------------------------------------------------------------------------------------------------


def test_stem_is_the_only_rename(mmseg_state_dict):
    converted = convert_state_dict(mmseg_state_dict)
    renamed = {k for k in mmseg_state_dict if k not in converted}
    assert renamed and all(k.startswith("backbone.stem.") for k in renamed)
    assert converted["backbone.bn1.weight"] is mmseg_state_dict["backbone.stem.7.weight"]
    assert converted["backbone.conv1.6.weight"] is mmseg_state_dict["backbone.stem.6.weight"]
    assert "neck.dilation_layers.3.0.pointwise_conv.bn.running_var" in converted


def test_converted_directory_has_the_promised_files_and_weights(converted_dir, reference_model):
    assert set(OUTPUT_FILES) <= {p.name for p in converted_dir.iterdir()}
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["model_type"] == "fastfcn" and config["decode_head"] == "psp" and config["use_auxiliary_head"]
    with safe_open(converted_dir / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        assert keys == set(reference_model.state_dict())  # training heads kept by default
        assert torch.equal(weights.get_tensor("backbone.bn1.running_var"), reference_model.backbone.bn1.running_var)
    card = (converted_dir / "README.md").read_text()
    assert RELEASED_FILE in card and "sha256" in card


def test_round_trip_through_auto_model_and_pipeline(converted_dir, reference_model):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    model = AutoModelForSemanticSegmentation.from_pretrained(converted_dir).eval()
    assert type(model).__name__ == "FastFCNForSemanticSegmentation"
    processor = AutoImageProcessor.from_pretrained(converted_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 104, 3), dtype=np.uint8))
    inputs = processor(image)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reference_model(**inputs).logits, atol=1e-5)

    segments = pipeline("image-segmentation", model=converted_dir)(image)
    assert segments, "the pipeline returned no segment"
    names = set(model.config.id2label.values())
    assert all(s["label"] in names and s["mask"].size == image.size for s in segments)


def test_variant_inference(mmseg_state_dict):
    ade = get_variant("fastfcn_r50_jpu_enc.ade20k_160k")
    assert infer_variant({}, Path(ade.mmseg_checkpoint).name).name == ade.name  # released file name
    assert infer_variant({}, "fastfcn_r50-d32_jpu_enc_4x4_512x1024_80k_cityscapes_mine.pth").name == (
        "fastfcn_r50_jpu_enc.cityscapes_4xb4"
    )  # 0.x config name inside a file name: 4x4 is not mistaken for 4x2
    assert infer_variant({}, None, mmseg_config=ade.mmseg_config + ".py").name == ade.name
    assert infer_variant({}, None, variant="pspnet_r50_d8.cityscapes").name == "pspnet_r50_d8.cityscapes"
    baseline = {**mmseg_state_dict}
    baseline = {k: v for k, v in baseline.items() if not k.startswith("neck.")}
    assert infer_variant(baseline, "weights.pth").name == "pspnet_r50_d8.cityscapes"  # only one D8 PSPNet


def test_drop_training_heads(tmp_path, checkpoint):
    output = tmp_path / "inference_only"
    main(["convert", str(checkpoint), str(output), "--drop-training-heads"])
    with safe_open(output / "model.safetensors", "pt") as weights:
        assert not [k for k in weights.keys() if k.startswith("auxiliary_head.")]
    assert json.loads((output / "config.json").read_text())["use_auxiliary_head"] is False
    assert FastFCN.from_pretrained(output).auxiliary_head is None


def test_push_dry_run_writes_exactly_the_upload(tmp_path, checkpoint, capsys):
    dry = tmp_path / "upload"
    assert main(["push", str(checkpoint), "--dry-run", str(dry), "--repo-id", "someone/fastfcn-test"]) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in dry.iterdir())
    assert set(OUTPUT_FILES) <= set(files)
    assert "someone/fastfcn-test" in out and all(name in out for name in files)
    FastFCN.from_pretrained(dry)  # what would be uploaded loads


def test_push_defaults_to_the_canonical_repo_id(tmp_path, checkpoint, capsys):
    assert main(["push", str(checkpoint), "--dry-run", str(tmp_path / "upload")]) == 0
    assert get_variant(VARIANT).hub_repo_id in capsys.readouterr().out


def test_scripts_are_the_cli():
    root = Path(__file__).parents[1] / "scripts"
    for script, command in (("convert_mmseg_checkpoint.py", '"convert"'), ("push_to_hub.py", '"push"')):
        text = (root / script).read_text()
        assert "from fastfcn_hub.cli import main" in text and command in text


# --------------------------------------------------------------------------------------------------------------
# Errors: each gives a clear message and leaves no output directory behind
# --------------------------------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this would create a file: proof that weights_only loading never executes it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_needs_code_is_refused(tmp_path, mmseg_state_dict):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": {"hook": _RunsCode(marker)}}, path)
    with pytest.raises(ConversionError, match=r"(?s)Refusing to load evil.pth.*weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path, checkpoint):
    truncated = tmp_path / RELEASED_FILE
    truncated.write_bytes(checkpoint.read_bytes()[: 1 << 20])
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        convert_checkpoint(truncated, output)
    assert not output.exists() and not _leftovers(tmp_path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(text)
    no_state_dict = tmp_path / "numbers.pth"
    torch.save({"iteration": 5, "lr": 0.1}, no_state_dict)
    with pytest.raises(ConversionError, match="holds no state dict"):
        load_checkpoint(no_state_dict)
    with pytest.raises(ConversionError, match="No checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")


def test_other_architecture_names_missing_and_unexpected_keys(tmp_path, mmseg_state_dict):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {k: v for k, v in mmseg_state_dict.items() if k.startswith("backbone.")}}, path)
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="matches no released variant"):
        convert_checkpoint(path, output)
    with pytest.raises(ConversionError, match=r"106 missing keys: .*decode_head\.psp_modules\.\* \(24\).*neck\."):
        convert_checkpoint(path, output, variant=VARIANT)
    extra = tmp_path / "extra.pth"
    torch.save({"state_dict": {**mmseg_state_dict, "decode_head.lateral_convs.0.conv.weight": torch.zeros(1)}}, extra)
    with pytest.raises(
        ConversionError, match=r"1 unexpected keys: decode_head\.lateral_convs\.\* \(1\); e\.g\. decode_"
    ):
        convert_checkpoint(extra, output, variant=VARIANT)
    assert not output.exists() and not _leftovers(tmp_path)


def test_wrong_shapes(tmp_path, mmseg_state_dict):
    path = tmp_path / RELEASED_FILE
    wrong = {**mmseg_state_dict, "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1)}
    torch.save({"state_dict": wrong}, path)
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"decode_head.conv_seg.weight: checkpoint \(150, 512, 1, 1\), model"):
        convert_checkpoint(path, output)
    assert not output.exists() and not _leftovers(tmp_path)


def test_ambiguous_state_dict_asks_for_the_variant(tmp_path, mmseg_state_dict):
    path = tmp_path / "model.pth"
    torch.save(mmseg_state_dict, path)  # a bare state dict, no telling name
    with pytest.raises(ConversionError, match=r"(?s)--variant fastfcn_r50_jpu_psp.cityscapes_4xb2.*4xb4"):
        convert_checkpoint(path, tmp_path / "out")


def test_existing_output_directory(tmp_path, checkpoint, capsys):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(["convert", str(checkpoint), str(output)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]

    assert main(["convert", str(checkpoint), str(output), "--overwrite"]) == 0
    assert set(OUTPUT_FILES) <= {p.name for p in output.iterdir()} and not (output / "keep.txt").exists()
    assert not _leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(checkpoint), str(empty)]) == 0  # an empty directory is fine


def test_failure_while_writing_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    import fastfcn_hub.model_cards

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fastfcn_hub.model_cards, "model_card", broken)
    output = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(checkpoint, output)
    assert not output.exists() and not _leftovers(tmp_path)


def test_unknown_names(tmp_path, checkpoint):
    with pytest.raises(ConversionError, match="Unknown mmsegmentation config 'pspnet_r18"):
        convert_checkpoint(checkpoint, tmp_path / "a", mmseg_config="pspnet_r18-d8_4xb2-80k_cityscapes-512x1024")
    with pytest.raises(ConversionError, match="Unknown FastFCN variant"):
        convert_checkpoint(checkpoint, tmp_path / "b", variant="fastfcn_r50_jpu_pspnet")
    with pytest.raises(ConversionError, match="has no mmsegmentation checkpoint"):
        convert_checkpoint(checkpoint, tmp_path / "c", variant="fastfcn_r18_jpu_psp")


def test_url_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="Download it where you have network access"):
        load_checkpoint(get_variant(VARIANT).mmseg_checkpoint)


def test_hub_ids_offline_say_what_to_do():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    repo_id = get_variant(VARIANT).hub_repo_id
    with pytest.raises(OSError, match=r"fastfcn-hub convert https://download\.openmmlab\.com/.*57749bed\.pth"):
        FastFCN.from_pretrained(repo_id)
    with pytest.raises(OSError, match="fastfcn-hub convert"):
        create_model(VARIANT, pretrained=True)
