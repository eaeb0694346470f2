"""Pictures of segmentations: colour label maps, overlays on the image, and a legend of the classes shown."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def cityscapes_palette() -> np.ndarray:
    """[19, 3] uint8 colours of Cityscapes' train classes, from cityscapesScripts' label table."""
    from cityscapesscripts.helpers.labels import trainId2label

    return np.array([trainId2label[train_id].color for train_id in range(19)], dtype=np.uint8)


def default_palette(num_labels: int) -> np.ndarray:
    """Cityscapes' palette for 19 classes; otherwise well-separated hues (golden-ratio steps), deterministic."""
    if num_labels == 19:
        return cityscapes_palette()
    colours = []
    for index in range(num_labels):
        hue = (index * 0.618033988749895) % 1.0
        saturation, value = (0.65, 0.95) if index % 2 == 0 else (0.9, 0.7)
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.array(colours, dtype=np.uint8)


def colorize(
    label_map: np.ndarray, palette: np.ndarray, ignore_colour: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """An RGB image of a label map; values outside the palette (e.g. 255) get `ignore_colour`."""
    label_map = np.asarray(label_map)
    lookup = np.tile(np.array(ignore_colour, dtype=np.uint8), (256, 1))
    lookup[: len(palette)] = palette[:256]
    return Image.fromarray(lookup[np.clip(label_map, 0, 255).astype(np.uint8)])


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def overlay(
    image: Image.Image,
    label_map: np.ndarray,
    id2label: Mapping[int, str],
    palette: np.ndarray | None = None,
    alpha: float = 0.55,
    legend: bool = True,
    min_width: int = 512,
) -> Image.Image:
    """Blend the colour label map over the image and, optionally, add a legend of the classes present.

    Images narrower than `min_width` are enlarged by a whole factor (nearest neighbour, so pixels stay visible as
    blocks) so that small inputs are not dwarfed by the legend.
    """
    label_map = np.asarray(label_map)
    palette = default_palette(len(id2label)) if palette is None else palette
    image = image.convert("RGB")
    if image.size != (label_map.shape[1], label_map.shape[0]):
        image = image.resize((label_map.shape[1], label_map.shape[0]), Image.BILINEAR)
    blended = Image.blend(image, colorize(label_map, palette), alpha)
    if blended.width < min_width:
        factor = -(-min_width // blended.width)
        blended = blended.resize((blended.width * factor, blended.height * factor), Image.NEAREST)
    if not legend:
        return blended

    values, counts = np.unique(label_map, return_counts=True)
    present = [(int(v), c) for v, c in zip(values, counts) if int(v) in id2label]
    present.sort(key=lambda item: -item[1])
    font_size = max(12, min(28, blended.height // 30))
    font = _font(font_size)
    row = int(font_size * 1.5)
    width = max(160, int(font_size * 12))
    panel = Image.new("RGB", (width, max(blended.height, row * (len(present) + 1))), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    draw.text((8, 4), "classes (area %)", fill=(0, 0, 0), font=font)
    total = label_map.size
    for index, (value, count) in enumerate(present, start=1):
        top = index * row + 4
        draw.rectangle([8, top, 8 + font_size, top + font_size], fill=tuple(int(c) for c in palette[value]),
                       outline=(0, 0, 0))  # fmt: skip
        draw.text((16 + font_size, top), f"{id2label[value]} ({100 * count / total:.1f})", fill=(0, 0, 0), font=font)
    canvas = Image.new("RGB", (blended.width + panel.width, max(blended.height, panel.height)), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(panel, (blended.width, 0))
    return canvas


__all__ = ["cityscapes_palette", "colorize", "default_palette", "overlay"]
