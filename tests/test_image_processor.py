"""FastFCNImageProcessor: every input kind and mode, labels, resizing, post-processing, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastfcn_hub import FastFCNConfig, FastFCNImageProcessor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def expected_pixels(rgb_uint8: np.ndarray) -> torch.Tensor:
    """mmsegmentation's normalisation: (x - 255 * mean) / (255 * std) on the 0-255 scale, CHW."""
    normalised = (rgb_uint8.astype(np.float64) - MEAN) / STD
    return torch.from_numpy(normalised.transpose(2, 0, 1)).float()


@pytest.fixture
def processor():
    return FastFCNImageProcessor()


def test_rgb_pil_numpy_and_tensor_inputs_agree(processor):
    expected = expected_pixels(RGB)
    for image in (Image.fromarray(RGB), RGB, RGB.transpose(2, 0, 1), torch.from_numpy(RGB.transpose(2, 0, 1).copy())):
        pixel_values = processor(image)["pixel_values"]
        assert pixel_values.shape == (1, 3, 30, 40) and pixel_values.dtype == torch.float32
        torch.testing.assert_close(pixel_values[0], expected, atol=1e-5, rtol=0)


def test_grey_rgba_and_palette_images_become_rgb(processor):
    grey = RNG.integers(0, 256, (30, 40), dtype=np.uint8)
    torch.testing.assert_close(
        processor(Image.fromarray(grey))["pixel_values"][0], expected_pixels(np.repeat(grey[..., None], 3, 2))
    )
    rgba = np.concatenate([RGB, np.full((30, 40, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(processor(Image.fromarray(rgba, "RGBA"))["pixel_values"][0], expected_pixels(RGB))
    torch.testing.assert_close(processor(rgba)["pixel_values"][0], expected_pixels(RGB))
    palette_image = Image.fromarray(RGB).convert("P")
    torch.testing.assert_close(
        processor(palette_image)["pixel_values"][0], expected_pixels(np.asarray(palette_image.convert("RGB")))
    )


def test_sixteen_bit_images_are_scaled_by_257(processor):
    sixteen = (RNG.integers(0, 256, (30, 40)).astype(np.uint16) * 257).astype(np.uint16)
    eight = (sixteen // 257).astype(np.uint8)
    pil16 = Image.fromarray(sixteen)
    assert pil16.mode == "I;16"
    for image in (pil16, sixteen):
        torch.testing.assert_close(
            processor(image)["pixel_values"][0], expected_pixels(np.repeat(eight[..., None], 3, 2)), atol=1e-4, rtol=0
        )


def test_float_images_are_taken_as_zero_to_one(processor):
    torch.testing.assert_close(
        processor(RGB.astype(np.float32) / 255)["pixel_values"][0], expected_pixels(RGB), atol=1e-4, rtol=0
    )


def test_batches_and_labels(processor):
    labels = RNG.integers(0, 19, (2, 30, 40))
    labels[0, 0, 0] = 255
    batch = processor(
        [RGB, RGB[::-1].copy()], segmentation_maps=[Image.fromarray(labels[0].astype(np.uint8)), labels[1]]
    )
    assert batch["pixel_values"].shape == (2, 3, 30, 40)
    assert batch["labels"].dtype == torch.int64
    assert torch.equal(batch["labels"], torch.from_numpy(labels))


def test_palette_label_maps_keep_their_indices(processor):
    indices = RNG.integers(0, 19, (30, 40)).astype(np.uint8)
    label = Image.fromarray(indices, "P")
    label.putpalette(list(RNG.integers(0, 256, 768)))
    assert torch.equal(
        processor(RGB, segmentation_maps=label)["labels"][0], torch.from_numpy(indices.astype(np.int64))
    )


def test_reduce_labels_ade20k_style():
    processor = FastFCNImageProcessor(do_reduce_labels=True)
    label = np.array([[0, 1, 150], [255, 2, 0]], dtype=np.uint8)
    out = processor(np.zeros((2, 3, 3), np.uint8), segmentation_maps=label)["labels"][0]
    assert out.tolist() == [[255, 0, 149], [255, 1, 255]]


def test_resize_exact_and_keep_ratio():
    exact = FastFCNImageProcessor(do_resize=True, size={"height": 64, "width": 32})
    batch = exact(RGB, segmentation_maps=np.zeros((30, 40), np.uint8))
    assert batch["pixel_values"].shape == (1, 3, 64, 32) and batch["labels"].shape == (1, 64, 32)
    keep = FastFCNImageProcessor(do_resize=True, size={"longest_edge": 2048, "shortest_edge": 1024})
    assert keep(np.zeros((512, 1024, 3), np.uint8))["pixel_values"].shape[-2:] == (1024, 2048)


def test_config_statistics_are_used():
    config = FastFCNConfig(backbone="resnet18", backbone_layout="d32", image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    processor = FastFCNImageProcessor.from_config(config)
    pixel_values = processor(np.full((4, 4, 3), 255, np.uint8))["pixel_values"]
    torch.testing.assert_close(pixel_values, torch.ones(1, 3, 4, 4))


def test_save_and_reload(tmp_path):
    processor = FastFCNImageProcessor(image_mean=(0.1, 0.2, 0.3), do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    reloaded = FastFCNImageProcessor.from_pretrained(tmp_path)
    assert reloaded.image_mean == [0.1, 0.2, 0.3] and reloaded.do_reduce_labels
    torch.testing.assert_close(reloaded(RGB)["pixel_values"], processor(RGB)["pixel_values"])


def test_post_process_resizes_to_target_sizes(processor):
    class Outputs:
        logits = torch.randn(2, 19, 8, 10)

    masks = processor.post_process_semantic_segmentation(Outputs(), target_sizes=[(64, 80), (30, 41)])
    assert [tuple(m.shape) for m in masks] == [(64, 80), (30, 41)]
    assert processor.post_process_semantic_segmentation(Outputs())[0].shape == (8, 10)
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(Outputs(), target_sizes=[(64, 80)])


@pytest.mark.parametrize(
    "images, error, message",
    [
        ([RGB, RGB[:20]], ValueError, "same size"),
        (np.zeros((5, 6, 7), np.uint8), ValueError, "channel"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), ValueError, "HxW"),
        ("not an image", TypeError, "Unsupported image type"),
        ([], ValueError, "No images"),
    ],
)
def test_bad_images_fail_clearly(processor, images, error, message):
    with pytest.raises(error, match=message):
        processor(images)


def test_bad_labels_fail_clearly(processor):
    with pytest.raises(ValueError, match="does not match"):
        processor(RGB, segmentation_maps=np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="colour image"):
        processor(RGB, segmentation_maps=Image.fromarray(RGB))
    with pytest.raises(ValueError, match="2 segmentation maps"):
        processor(RGB, segmentation_maps=[np.zeros((30, 40))] * 2)
