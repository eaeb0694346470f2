"""Inference modes: whole, slide (mmseg's grid and averaging), multi-scale + flip as a composition of single passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastfcn_hub import FastFCNImageProcessor, create_model
from fastfcn_hub.inference import (
    DEFAULT_SCALES,
    batches_by_size,
    expand_image_paths,
    load_image,
    predict_images,
    segment,
    slide_grid,
    whole_inference,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("fastfcn_r18_jpu_psp", num_labels=5, use_auxiliary_head=False).eval()


def forward_at_input_size(model, pixel_values):
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def test_whole_is_the_forward_resized_to_the_input(model):
    pixel_values = torch.randn(2, 3, 40, 72)
    scores = segment(model, pixel_values)
    assert scores.shape == (2, 5, 40, 72)
    torch.testing.assert_close(scores, forward_at_input_size(model, pixel_values), rtol=0, atol=0)


def test_slide_over_a_crop_sized_image_equals_whole(model):
    pixel_values = torch.randn(1, 3, 48, 64)
    torch.testing.assert_close(segment(model, pixel_values, mode="slide", crop_size=(48, 64), stride=(16, 16)),
                               segment(model, pixel_values), rtol=0, atol=0)  # fmt: skip


def test_slide_averages_overlapping_crops_like_mmseg(model):
    pixel_values = torch.randn(2, 3, 50, 90)
    crop, stride = (32, 48), (20, 30)
    expected_sum, count = torch.zeros(2, 5, 50, 90), torch.zeros(1, 1, 50, 90)
    # mmseg's slide_inference written out: grid from the stride, the last window pushed back inside the image
    for row in range((50 - 32 + 20 - 1) // 20 + 1):
        for column in range((90 - 48 + 30 - 1) // 30 + 1):
            y2, x2 = min(row * 20 + 32, 50), min(column * 30 + 48, 90)
            y1, x1 = max(y2 - 32, 0), max(x2 - 48, 0)
            expected_sum += F.pad(forward_at_input_size(model, pixel_values[:, :, y1:y2, x1:x2]),
                                  (x1, 90 - x2, y1, 50 - y2))  # fmt: skip
            count[:, :, y1:y2, x1:x2] += 1
    assert count.min() >= 1 and count.max() > 1
    actual = segment(model, pixel_values, mode="slide", crop_size=crop, stride=stride)
    torch.testing.assert_close(actual, expected_sum / count, rtol=1e-5, atol=1e-5)


def test_slide_grid_matches_mmseg_cityscapes_setting():
    windows = slide_grid(1024, 2048, (512, 1024), (341, 683))
    assert len(windows) == 9
    assert windows[0] == (0, 512, 0, 1024) and windows[-1] == (512, 1024, 1024, 2048)
    assert (341, 853, 683, 1707) in windows
    assert slide_grid(30, 50, (64, 64), (32, 32)) == [(0, 30, 0, 50)]  # smaller than the crop: one unpadded window


def test_slide_on_an_image_smaller_than_the_crop(model):
    pixel_values = torch.randn(1, 3, 24, 40)
    scores = segment(model, pixel_values, mode="slide", crop_size=(64, 64))
    torch.testing.assert_close(scores, segment(model, pixel_values), rtol=0, atol=0)


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_multi_scale_flip_is_the_mean_of_single_passes(model, average):
    pixel_values = torch.randn(2, 3, 37, 61)  # odd sizes: the rounding of scaled sizes matters
    scales = (0.5, 1.0, 1.25)
    expected = torch.zeros(2, 5, 37, 61)
    for ratio in scales:
        size = (int(37 * ratio + 0.5), int(61 * ratio + 0.5))
        scaled = F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            scores = forward_at_input_size(model, scaled.flip(-1) if flip else scaled)
            scores = scores.flip(-1) if flip else scores
            scores = F.interpolate(scores, size=(37, 61), mode="bilinear", align_corners=False)
            expected += scores.softmax(dim=1) if average == "probabilities" else scores
    actual = segment(model, pixel_values, scales=scales, flip=True, average=average)
    torch.testing.assert_close(actual, expected / 6, rtol=1e-5, atol=1e-5)


def test_flip_only_and_slide_under_multi_scale(model):
    pixel_values = torch.randn(1, 3, 32, 48)
    flipped = forward_at_input_size(model, pixel_values.flip(-1)).flip(-1)
    expected = (forward_at_input_size(model, pixel_values).softmax(1) + flipped.softmax(1)) / 2
    torch.testing.assert_close(segment(model, pixel_values, flip=True), expected, rtol=1e-5, atol=1e-6)
    # slide under multi-scale: crop larger than every scaled image is whole inference at every scale
    torch.testing.assert_close(
        segment(model, pixel_values, mode="slide", crop_size=(128, 128), scales=(0.75, 1.5), flip=True),
        segment(model, pixel_values, scales=(0.75, 1.5), flip=True), rtol=0, atol=0,
    )  # fmt: skip


def test_default_scales_are_mmsegs():
    assert DEFAULT_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_bad_arguments_are_explained(model):
    pixel_values = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="crop_size"):
        segment(model, pixel_values, mode="slide")
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        segment(model, pixel_values, mode="sliding")
    with pytest.raises(ValueError, match="positive"):
        segment(model, pixel_values, scales=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        segment(model, pixel_values[0])
    with pytest.raises(ValueError, match="positive int"):
        segment(model, pixel_values, mode="slide", crop_size=(0, 32))


def test_batches_by_size_keeps_order_and_sizes():
    items = [(4, 4), (4, 4), (4, 4), (2, 2), (4, 4)]
    batches = list(batches_by_size(enumerate(items), lambda item: item[1], batch_size=2))
    assert [[index for index, _ in batch] for batch in batches] == [[0, 1], [2], [3], [4]]


def test_predict_images_of_mixed_sizes_equals_one_at_a_time(model):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8))
              for shape in [(40, 56, 3), (40, 56, 3), (33, 47, 3), (40, 56, 3)]]  # fmt: skip
    processor = FastFCNImageProcessor.from_config(model.config)
    batched = list(predict_images(model, processor, images, batch_size=3))
    assert [m.shape for m in batched] == [(40, 56), (40, 56), (33, 47), (40, 56)]
    for image, label_map in zip(images, batched):
        pixel_values = processor(image)["pixel_values"]
        np.testing.assert_array_equal(label_map, whole_inference(model, pixel_values).argmax(1)[0].numpy())


def test_expand_image_paths_and_load_image(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.jpg", "z.png"):
        Image.new("RGB", (4, 3)).save(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = expand_image_paths([tmp_path / "a", str(tmp_path / "*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/y.jpg", "a/x.png", "z.png"]
    assert load_image(found[0]).mode == "RGB"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        expand_image_paths([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="matches no images"):
        expand_image_paths([str(tmp_path / "*.gif")])
    with pytest.raises(FileNotFoundError, match="No such image"):
        expand_image_paths([tmp_path / "missing.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read .*broken.png"):
        load_image(tmp_path / "broken.png")
