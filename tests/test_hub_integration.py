"""The transformers-native API: save/load, Auto classes, pipeline, and trust_remote_code loading without us."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from fastfcn_hub import CITYSCAPES_CLASSES, FastFCN, FastFCNConfig, FastFCNImageProcessor, create_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A light model with non-trivial weights and BN statistics, saved with save_pretrained."""
    torch.manual_seed(1)
    model = create_model("fastfcn_r18_jpu_enc").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    directory = tmp_path_factory.mktemp("saved") / "fastfcn"
    model.save_pretrained(directory)
    return model, directory


def test_directory_holds_safetensors_config_processor_and_code(saved):
    _, directory = saved
    files = set(os.listdir(directory))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not any(name.endswith((".bin", ".pth", ".pt")) for name in files)
    assert {"configuration_fastfcn.py", "modeling_fastfcn.py", "image_processing_fastfcn.py"} <= files
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "fastfcn"
    assert config["auto_map"]["AutoModelForSemanticSegmentation"].endswith("FastFCNForSemanticSegmentation")


def test_from_pretrained_reproduces_logits_exactly(saved):
    model, directory = saved
    pixel_values = torch.randn(2, 3, 90, 150)
    with torch.no_grad():
        expected = model(pixel_values).logits
        ours = FastFCN.from_pretrained(directory)
        auto = AutoModelForSemanticSegmentation.from_pretrained(directory)
        assert not ours.training and not auto.training
        assert torch.equal(ours(pixel_values).logits, expected)
        assert torch.equal(auto(pixel_values).logits, expected)
    assert isinstance(AutoConfig.from_pretrained(directory), FastFCNConfig)
    assert isinstance(AutoImageProcessor.from_pretrained(directory), FastFCNImageProcessor)


def test_loading_into_another_number_of_labels(saved):
    _, directory = saved
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        FastFCN.from_pretrained(directory, num_labels=5)
    model = FastFCN.from_pretrained(directory, num_labels=5, ignore_mismatched_sizes=True)
    assert model.decode_head.conv_seg.out_channels == 5
    assert model(torch.randn(1, 3, 64, 64)).logits.shape[1] == 5


def test_pipeline_returns_one_mask_per_predicted_class(saved, monkeypatch, caplog):
    model, directory = saved

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"pipeline asked the user: {args}")

    monkeypatch.setattr("builtins.input", no_prompt)  # our registered classes must load without any question
    segmenter = pipeline("image-segmentation", model=str(directory))
    assert not [r for r in caplog.records if "is not supported" in r.getMessage()]  # no false "unsupported" error
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    results = segmenter(image)

    processor = FastFCNImageProcessor.from_config(model.config)
    with torch.no_grad():
        expected = processor.post_process_semantic_segmentation(model(**processor(image)), target_sizes=[(120, 200)])
    expected_classes = {CITYSCAPES_CLASSES[i] for i in torch.unique(expected[0]).tolist()}
    assert {result["label"] for result in results} == expected_classes
    assert len(results) == len(expected_classes)
    for result in results:
        assert result["mask"].size == (200, 120)
        assert result["label"] in CITYSCAPES_CLASSES


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["fastfcn_hub"] = None  # behave as if fastfcn_hub were not installed
    import torch
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    directory, expected_path = sys.argv[1], sys.argv[2]
    try:
        AutoModelForSemanticSegmentation.from_pretrained(directory, trust_remote_code=False)
    except ValueError as error:
        assert "trust_remote_code" in str(error) or "custom code" in str(error), error
    else:
        raise AssertionError("loading custom code must need trust_remote_code=True")
    model = AutoModelForSemanticSegmentation.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__name__ == "FastFCNImageProcessor"
    pixel_values, expected = torch.load(expected_path, weights_only=True)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, expected)
        fast = model.optimize_for_inference()  # the copied optimize.py works without the package too
        assert (fast(pixel_values).logits - expected).abs().max() < 1e-4
    print("REMOTE-CODE-OK")
    """
)


def test_trust_remote_code_loads_without_fastfcn_hub(saved, tmp_path):
    model, directory = saved
    pixel_values = torch.randn(1, 3, 80, 100)
    with torch.no_grad():
        expected = model(pixel_values).logits
    torch.save((pixel_values, expected), tmp_path / "expected.pt")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, str(script), str(directory), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK" in result.stdout
