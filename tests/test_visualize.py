"""Pictures: palettes, colour maps and overlays with a legend."""

import numpy as np
from PIL import Image

from fastfcn_hub.labels import CITYSCAPES_CLASSES
from fastfcn_hub.visualize import cityscapes_palette, colorize, default_palette, overlay

ID2LABEL = dict(enumerate(CITYSCAPES_CLASSES))


def test_palettes():
    palette = cityscapes_palette()
    assert palette.shape == (19, 3) and tuple(palette[0]) == (128, 64, 128)  # road, cityscapesScripts' colour
    assert np.array_equal(default_palette(19), palette)
    many = default_palette(150)
    assert many.shape == (150, 3) and len({tuple(c) for c in many}) == 150  # distinct colours for ADE20K


def test_colorize_uses_the_palette_and_blacks_out_ignored_pixels():
    label_map = np.array([[0, 1], [255, 18]])
    colours = np.asarray(colorize(label_map, cityscapes_palette()))
    assert tuple(colours[0, 0]) == (128, 64, 128) and tuple(colours[1, 0]) == (0, 0, 0)
    assert tuple(colours[1, 1]) == tuple(cityscapes_palette()[18])


def test_overlay_has_a_legend_of_the_classes_present_and_enlarges_small_images():
    image = Image.new("RGB", (100, 40), (10, 20, 30))
    label_map = np.zeros((40, 100), dtype=np.int64)
    label_map[:, 60:] = 13  # car
    picture = overlay(image, label_map, ID2LABEL)
    plain = overlay(image, label_map, ID2LABEL, legend=False)
    assert plain.size == (600, 240)  # 100 px wide -> enlarged 6x to reach 512 px, pixels kept as blocks
    assert picture.width > plain.width and picture.height >= plain.height  # legend panel on the right
    pixels = np.asarray(plain)
    assert (pixels[:, :360] == pixels[0, 0]).all() and (pixels[:, 360:] == pixels[0, -1]).all()
    large = overlay(Image.new("RGB", (800, 400)), np.zeros((400, 800), dtype=np.int64), ID2LABEL, legend=False)
    assert large.size == (800, 400)  # large images keep their size
