"""A synthetic Cityscapes: street scenes written in the official folder layout, with labelIds PNGs.

Tests and the demo need data that the real loader reads unchanged and that a model can learn in minutes on a CPU,
but not from one colour per class: every scene has its own horizon, perspective and lighting, each class its own
colour jitter and texture, and objects (cars, people, poles, signs) are small and partly occluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# Cityscapes labelIds (cityscapesscripts.helpers.labels) of the classes a scene is drawn with.
UNLABELED, EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 0, 1, 7, 8, 11, 12, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BICYCLE = (
    19, 20, 21, 22, 23, 24, 25, 26, 27, 33,
)  # fmt: skip

# Base colour (RGB) of each class; every scene shifts it, and every region adds texture on top.
_BASE_COLOURS: dict[int, tuple[int, int, int]] = {
    ROAD: (95, 90, 100), SIDEWALK: (165, 150, 150), BUILDING: (125, 110, 95), WALL: (150, 140, 120),
    FENCE: (120, 125, 110), POLE: (110, 110, 115), TRAFFIC_LIGHT: (40, 40, 35), TRAFFIC_SIGN: (200, 190, 40),
    VEGETATION: (60, 110, 45), TERRAIN: (130, 150, 80), SKY: (140, 180, 225), PERSON: (150, 60, 70),
    RIDER: (180, 60, 40), CAR: (50, 70, 140), TRUCK: (170, 170, 175), BICYCLE: (90, 30, 40), EGO_VEHICLE: (30, 30, 30),
}  # fmt: skip

DEFAULT_CITIES = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau"), "test": ("berlin",)}


class _Canvas:
    """An image and its labelIds map, painted together so they never disagree."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.height, self.width, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label = np.full((height, width), UNLABELED, dtype=np.uint8)
        # Scene lighting and per-class colour shifts: the same class looks different from scene to scene.
        self.light = rng.uniform(0.75, 1.2)
        self.shift = {label_id: rng.normal(0, 14, size=3) for label_id in _BASE_COLOURS}

    def colour(self, label_id: int, jitter: float = 10.0) -> np.ndarray:
        base = np.asarray(_BASE_COLOURS[label_id], dtype=np.float32) + self.shift[label_id]
        return (base + self.rng.normal(0, jitter, size=3)) * self.light

    def paint(self, mask: np.ndarray, label_id: int, colour: np.ndarray | None = None, texture: float = 12.0) -> None:
        """Fill `mask` with a class: its colour, a smooth gradient and fine texture noise."""
        if not mask.any():
            return
        colour = self.colour(label_id) if colour is None else colour
        rows = np.nonzero(mask)[0].astype(np.float32) / self.height * 2 - 1  # -1 at the top, 1 at the bottom
        gradient = rows[:, None] * self.rng.normal(0, 8, size=3).astype(np.float32)
        noise = self.rng.normal(0, texture, size=(len(rows), 1)).astype(np.float32)
        self.image[mask] = colour[None, :] + gradient + noise
        self.label[mask] = label_id

    def rect(self, top: float, bottom: float, left: float, right: float) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        t, b = int(max(0, top)), int(min(self.height, bottom))
        left_, r = int(max(0, left)), int(min(self.width, right))
        if b > t and r > left_:
            mask[t:b, left_:r] = True
        return mask

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        ys, xs = np.ogrid[: self.height, : self.width]
        return ((ys - cy) / max(ry, 0.5)) ** 2 + ((xs - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _draw_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (RGB uint8 image, labelIds uint8 map)."""
    canvas = _Canvas(height, width, rng)
    horizon = int(height * rng.uniform(0.35, 0.5))
    ys, xs = np.mgrid[:height, :width]

    # Sky, then buildings (with windows) and trees standing on the horizon.
    canvas.paint(ys < horizon, SKY, texture=4)
    x = int(rng.integers(-width // 10, 0))
    while x < width:
        building_width = int(rng.uniform(0.08, 0.25) * width)
        top = horizon - rng.uniform(0.3, 0.95) * horizon
        kind = BUILDING if rng.random() < 0.85 else WALL
        canvas.paint(canvas.rect(top, horizon + 1, x, x + building_width), kind, texture=10)
        if kind == BUILDING:  # windows: darker cells, still building
            window = canvas.colour(BUILDING) * 0.55
            step = max(3, building_width // 5)
            for wy in range(max(0, int(top)) + step // 2, horizon - step, step):
                for wx in range(max(0, x + step // 3), min(width, x + building_width) - step // 2, step):
                    canvas.image[wy : wy + step // 2, wx : wx + max(1, step // 3)] = window + rng.normal(0, 6, size=3)
        x += building_width
    for _ in range(rng.integers(1, 5)):
        cx, radius = rng.uniform(0, width), rng.uniform(0.05, 0.14) * width
        crown = canvas.ellipse(horizon - radius * 0.8, cx, radius, radius * rng.uniform(0.7, 1.2))
        canvas.paint(crown & (ys < horizon + 2), VEGETATION, texture=22)

    # Ground: road in a perspective trapezoid, sidewalks beside it, terrain strips at the far edges.
    vanish_x = width * rng.uniform(0.35, 0.65)
    depth = np.clip((ys - horizon) / max(1, height - horizon), 0, 1)
    road_half = 0.04 * width + depth * width * rng.uniform(0.35, 0.55)
    walk_half = road_half + 0.02 * width + depth * width * rng.uniform(0.12, 0.3)
    ground = ys >= horizon
    canvas.paint(ground & (np.abs(xs - vanish_x) >= walk_half), TERRAIN, texture=18)
    canvas.paint(ground & (np.abs(xs - vanish_x) < walk_half), SIDEWALK, texture=9)
    road = ground & (np.abs(xs - vanish_x) < road_half)
    canvas.paint(road, ROAD, texture=7)
    lane = (
        road & (np.abs(xs - vanish_x) < 0.004 * width + depth * 0.01 * width) & ((ys // max(2, height // 24)) % 2 == 0)
    )
    canvas.image[lane] = np.array([225.0, 225.0, 215.0]) * canvas.light  # lane marks are road too
    if rng.random() < 0.5:  # a fence along one sidewalk
        side = rng.choice([-1, 1])
        fence = ground & (side * (xs - vanish_x) > walk_half - 0.02 * width) & (side * (xs - vanish_x) < walk_half)
        fence |= canvas.rect(horizon - 0.06 * height, horizon, 0, width) & (side * (xs - vanish_x) > 0.3 * width)
        canvas.paint(fence & (canvas.label != SKY), FENCE, texture=16)

    # Objects, far to near, so nearer ones occlude farther ones.
    objects = []
    for _ in range(rng.integers(1, 5)):
        objects.append(("car", rng.uniform(horizon + 2, height * 0.95)))
    for _ in range(rng.integers(1, 4)):
        objects.append(("person", rng.uniform(horizon + 2, height * 0.95)))
    for _ in range(rng.integers(1, 4)):
        objects.append(("pole", rng.uniform(horizon + 2, height * 0.9)))
    for kind, bottom in sorted(objects, key=lambda item: item[1]):
        scale = 0.15 + 0.85 * (bottom - horizon) / max(1, height - horizon)  # perspective: nearer is larger
        half_road = 0.04 * width + scale * width * 0.45
        if kind == "car":
            cx = vanish_x + rng.uniform(-0.8, 0.8) * half_road
            w, h = 0.28 * width * scale, 0.16 * height * scale
            kind_id = TRUCK if rng.random() < 0.15 else CAR
            colour = canvas.colour(kind_id, jitter=45)
            canvas.paint(canvas.rect(bottom - h, bottom - 0.1 * h, cx - w / 2, cx + w / 2), kind_id, colour, 8)
            canvas.paint(canvas.rect(bottom - 1.45 * h, bottom - h, cx - w / 3, cx + w / 3), kind_id, colour * 0.8, 8)
            glass = canvas.rect(bottom - 1.4 * h, bottom - 1.05 * h, cx - w / 3.6, cx + w / 3.6)
            canvas.image[glass] = np.array([60.0, 70.0, 80.0]) + rng.normal(0, 5, size=3)
            for wheel_x in (cx - w / 3, cx + w / 3):
                wheel = canvas.ellipse(bottom - 0.12 * h, wheel_x, 0.18 * h, 0.08 * w)
                canvas.paint(wheel, kind_id, np.array([25.0, 25.0, 25.0]), 4)
        elif kind == "person":
            side = rng.choice([-1, 1])
            cx = vanish_x + side * rng.uniform(1.05, 1.6) * half_road
            h = 0.3 * height * scale
            on_bike = rng.random() < 0.15
            body = canvas.ellipse(bottom - 0.45 * h, cx, 0.42 * h, 0.11 * h)
            head = canvas.ellipse(bottom - 0.95 * h, cx, 0.08 * h, 0.07 * h)
            canvas.paint(body | head, RIDER if on_bike else PERSON, canvas.colour(PERSON, jitter=60), 10)
            if on_bike:
                canvas.paint(canvas.ellipse(bottom - 0.1 * h, cx, 0.12 * h, 0.3 * h) & ~body, BICYCLE, None, 6)
        else:  # a pole on the sidewalk, sometimes carrying a sign or a traffic light
            side = rng.choice([-1, 1])
            cx = vanish_x + side * rng.uniform(1.1, 1.5) * half_road
            h, w = 0.55 * height * scale, max(1.0, 0.012 * width * scale)
            canvas.paint(canvas.rect(bottom - h, bottom, cx - w / 2, cx + w / 2), POLE, None, 6)
            top = bottom - h
            if rng.random() < 0.5:
                canvas.paint(canvas.rect(top - 4 * w, top + 2 * w, cx - 3 * w, cx + 3 * w), TRAFFIC_SIGN, None, 8)
            elif rng.random() < 0.5:
                canvas.paint(canvas.rect(top - 5 * w, top + w, cx - 1.5 * w, cx + 1.5 * w), TRAFFIC_LIGHT, None, 8)

    # The bonnet of the recording car: ego vehicle (ignored in trainIds), with a few unlabeled pixels around it.
    bonnet = ys > height * (1 - rng.uniform(0.04, 0.09)) + 0.04 * height * ((xs - width / 2) / width) ** 2 * 4
    canvas.paint(bonnet, EGO_VEHICLE, texture=5)

    image = canvas.image + rng.normal(0, 6, size=canvas.image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), canvas.label


def make_synthetic_cityscapes(
    root: str | Path,
    num_train: int = 24,
    num_val: int = 8,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    cities: dict[str, Sequence[str]] | None = None,
    num_test: int = 0,
) -> Path:
    """Write a synthetic Cityscapes under `root` in the official layout and return `root`.

    Writes `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and the matching
    `gtFine/<split>/<city>/..._gtFine_labelIds.png` (Cityscapes labelIds, so loading exercises the labelId ->
    trainId mapping; the ego vehicle and unlabeled pixels become 255). Images are spread over `cities` (split ->
    city names). `size` is (height, width). The same seed gives the same files.
    """
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f"`size` must be at least (32, 32) to draw a scene, got {size}.")
    root = Path(root)
    cities = {**DEFAULT_CITIES, **(cities or {})}
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        split_cities = list(cities[split])
        for index in range(count):
            city = split_cities[index % len(split_cities)]
            stem = f"{city}_{index:06d}_000019"
            image, label = _draw_scene(height, width, rng)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png")
    return root


__all__ = ["DEFAULT_CITIES", "make_synthetic_cityscapes"]
