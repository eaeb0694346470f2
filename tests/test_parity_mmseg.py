"""Parity with mmsegmentation 1.2.2 for all 15 released architectures, through the real conversion path.

For each released variant: mmsegmentation builds the model from its own shipped config (SyncBN as BN), every weight
and BatchNorm statistic gets random values, the state dict is saved in mmsegmentation's checkpoint format under the
released file name, `fastfcn-hub convert` converts it, and the converted directory is loaded back with
`from_pretrained`. Then, from the same uint8 RGB images through each side's own preprocessing:
- full-resolution whole-image logits agree within 1e-4 (max abs, float32) at 64x128 and 80x136 (not a multiple of 32);
- the training loss (decode + auxiliary [+ SE], mmsegmentation's reduction) agrees within 1e-5 relative, from the
  same annotation PNGs through each side's label loading (ADE20K's reduce-zero-label included).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastfcn_hub import FastFCN, FastFCNImageProcessor, list_models
from fastfcn_hub.cli import main
from fastfcn_hub.variants import get_variant

pytestmark = pytest.mark.parity

RELEASED = list_models(released=True)
SIZES = [(64, 128), (80, 136)]
LOGITS_ATOL = 1e-4
LOSS_RTOL = 1e-5


def test_all_fifteen_released_architectures_are_covered():
    names = set(RELEASED)
    assert len(names) == 15
    assert sum(name.endswith(".cityscapes") for name in names) == 3  # the D8 baselines
    assert sum(".cityscapes_4xb" in name for name in names) == 6
    assert sum(".ade20k_" in name for name in names) == 6


@pytest.fixture(scope="module")
def mmseg_reference():
    from fastfcn_hub import mmseg_reference

    try:
        mmseg_reference.import_mmseg()
    except ImportError as error:  # a failure, not a skip: CI installs the `parity` extra
        pytest.fail(str(error))
    return mmseg_reference


@pytest.fixture(scope="module", params=RELEASED)
def converted(request, mmseg_reference, tmp_path_factory):
    """(variant, mmseg model, our converted model, our processor); one variant alive at a time (module scope)."""
    variant = get_variant(request.param)
    work = tmp_path_factory.mktemp(variant.name.replace(".", "_"))
    reference = mmseg_reference.build_model(variant.mmseg_config)
    mmseg_reference.randomize_(reference, seed=RELEASED.index(variant.name))
    checkpoint = mmseg_reference.save_checkpoint(reference, work / Path(variant.mmseg_checkpoint).name)
    assert main(["convert", str(checkpoint), str(work / "converted")]) == 0
    checkpoint.unlink()  # ~200 MB each
    ours = FastFCN.from_pretrained(work / "converted", loss_average="all").eval()  # mmseg's CE reduction
    processor = FastFCNImageProcessor.from_pretrained(work / "converted")
    yield variant, reference, ours, processor


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with structure at several scales (smooth blobs plus noise), not just white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(3, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    smooth = F.interpolate(torch.from_numpy(coarse)[None], size=(height, width), mode="bilinear")[0].numpy()
    image = smooth + rng.normal(0, 20, size=smooth.shape)
    return np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_whole_image_logits_match(converted, mmseg_reference, size):
    variant, reference, ours, processor = converted
    image = _image(*size, seed=size[1])
    expected = mmseg_reference.whole_image_logits(reference, image)  # [C, H, W], mmseg's preprocessing

    with torch.no_grad():
        logits = ours(**processor(image)).logits  # stride 8
    full = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]

    assert full.shape == expected.shape == (len(variant.config["id2label"]), *size)
    difference = (full - expected).abs().max().item()
    assert difference <= LOGITS_ATOL, f"{variant.name} at {size}: max |logit difference| {difference:.3g}"
    assert expected.abs().max() > 0.1  # random weights did not collapse the logits to ~0


def _without_dropout(model: nn.Module) -> nn.Module:
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.eval()
    return model


def test_training_loss_matches(converted, mmseg_reference, tmp_path):
    variant, reference, ours, processor = converted
    num_labels = len(variant.config["id2label"])
    rng = np.random.default_rng(7)
    images = [_image(64, 128, seed=seed) for seed in (1, 2)]
    # Annotation files as the dataset ships them: Cityscapes trainIds (255 = ignore), ADE20K 0..150 (0 = "other").
    reduce = variant.processor.get("do_reduce_labels", False)
    raw = [rng.integers(0, num_labels + reduce, size=(64, 128)).astype(np.uint8) for _ in images]
    raw[0][:16] = 0 if reduce else 255  # ignored pixels: mmseg averages over all pixels, counting them as zero
    raw[1][:, :40] = 0 if reduce else 255
    paths = []
    for index, label in enumerate(raw):
        paths.append(tmp_path / f"label{index}.png")
        Image.fromarray(label).save(paths[-1])

    mmseg_labels = [mmseg_reference.load_label_map(variant.mmseg_config, path) for path in paths]
    assert (mmseg_labels[0][:16] == 255).all()
    expected = mmseg_reference.training_loss(copy.deepcopy(reference), images, mmseg_labels)
    model = _without_dropout(copy.deepcopy(ours))
    with torch.no_grad():
        loss = model(**processor(images, segmentation_maps=[Image.open(path) for path in paths])).loss

    if variant.config["decode_head"] == "enc":
        assert "decode.loss_se" in expected  # the SE loss is part of what is compared
    relative = abs(loss.item() - expected["loss"].item()) / abs(expected["loss"].item())
    assert relative <= LOSS_RTOL, f"{variant.name}: loss {loss.item():.8g} vs mmseg {expected['loss'].item():.8g}"


def test_parameter_count_matches(converted):
    variant, reference, ours, _ = converted
    ours_count = sum(p.numel() for p in ours.parameters())
    assert ours_count == sum(p.numel() for p in reference.parameters()), variant.name
