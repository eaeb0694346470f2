"""ONNX (checked in onnxruntime) and torch.export of whole-image inference give the plain model's logits."""

import pytest
import torch

from fastfcn_hub import create_model
from fastfcn_hub.export import (
    FixedSizeAdaptiveAvgPool2d,
    WholeImageSegmenter,
    check_export_size,
    export_onnx,
    export_program,
    onnx_max_abs_diff,
)

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    ("name", "height", "width", "exact_pooling"),
    [
        ("fastfcn_r18_jpu_psp", 144, 240, False),  # multiples of 48: native adaptive pooling
        ("fastfcn_r18_jpu_psp", 128, 256, True),  # 16x32 map, uneven bins: fixed averaging matrices
        ("fastfcn_r18_jpu_enc", 128, 192, False),
        ("fastfcn_r18_jpu_aspp", 128, 192, False),
    ],
)
def test_onnx_matches_pytorch(tmp_path, name: str, height: int, width: int, exact_pooling: bool) -> None:
    model = create_model(name).eval()
    path = export_onnx(model, tmp_path / "model.onnx", height, width, exact_pooling=exact_pooling)
    pixel_values = torch.randn(1, 3, height, width)
    assert onnx_max_abs_diff(path, model, pixel_values) <= 1e-4


def test_onnx_output_is_whole_image_logits(tmp_path) -> None:
    import onnxruntime

    model = create_model("fastfcn_r18_jpu_enc").eval()
    path = export_onnx(model, tmp_path / "model.onnx", 96, 144)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": torch.randn(1, 3, 96, 144).numpy()})
    assert logits.shape == (1, model.config.num_labels, 96, 144)


def test_psp_export_size_constraint_is_enforced_with_valid_sizes(tmp_path) -> None:
    model = create_model("fastfcn_r18_jpu_psp")
    with pytest.raises(ValueError, match=r"multiples of 48 \(height 96 or 144, width 240 or 288\).*exact_pooling"):
        export_onnx(model, tmp_path / "model.onnx", 128, 256)
    assert not (tmp_path / "model.onnx").exists()
    check_export_size(model, 1008, 2016)  # the Cityscapes-like size that works natively
    check_export_size(create_model("fastfcn_r18_jpu_aspp"), 1024, 2048)  # only PSP pools adaptively


def test_fixed_size_pooling_equals_adaptive_pooling() -> None:
    x = torch.randn(2, 3, 16, 29)
    for bins in (1, 2, 3, 6):
        expected = torch.nn.functional.adaptive_avg_pool2d(x, bins)
        torch.testing.assert_close(FixedSizeAdaptiveAvgPool2d(bins, 16, 29)(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fixed for 16x29"):
        FixedSizeAdaptiveAvgPool2d(2, 16, 29)(torch.randn(1, 3, 16, 30))


@pytest.mark.parametrize("name", ["fastfcn_r18_jpu_psp", "fastfcn_r18_jpu_enc"])
def test_torch_export_matches_pytorch(tmp_path, name: str) -> None:
    model = create_model(name).eval()
    program = export_program(model, 128, 256)  # no divisibility constraint here
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    pixel_values = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = WholeImageSegmenter(model)(pixel_values)
        actual = torch.export.load(path).module()(pixel_values)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_export_command_writes_checked_onnx_and_torch_export(tmp_path, capsys) -> None:
    from fastfcn_hub.cli import main

    model = create_model("fastfcn_r18_jpu_psp").eval()
    model.save_pretrained(tmp_path / "model")
    onnx_path, program_path = tmp_path / "out" / "model.onnx", tmp_path / "out" / "model.pt2"
    assert main(["export", "--model", str(tmp_path / "model"), "--size", "96x192", "--output", str(onnx_path)]) == 0
    assert onnx_path.is_file() and "onnxruntime vs PyTorch: max |logit difference|" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "model"), "--size", "96x192", "--output", str(program_path)]) == 0
    program = torch.export.load(program_path)
    pixel_values = torch.randn(1, 3, 96, 192)
    with torch.no_grad():
        expected = WholeImageSegmenter(model).eval()(pixel_values)
        torch.testing.assert_close(program.module()(pixel_values), expected, rtol=1e-4, atol=1e-4)
    # An impossible size for ONNX's pooling is refused with the sizes that work; nothing is written.
    bad = tmp_path / "bad" / "model.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--size", "100x200", "--output", str(bad)]) == 2
    assert "multiples of 48" in capsys.readouterr().err and not bad.exists()
    assert main(["export", "--model", str(tmp_path / "model"), "--size", "96x192", "--output", "model.bin"]) == 2
