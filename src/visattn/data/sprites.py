"""Sprites for the procedural scenes: digits and outlined shapes as alpha masks.

Every object in a scene is one of 16 classes: the digits zero to nine, drawn with Pillow's built-in scalable
font (``ImageFont.load_default(size=...)``, Pillow >= 10.1, so no font file is read from disk), and six
outlined geometric shapes drawn with ``ImageDraw``. Shapes are outlines with the same stroke width as the
font's strokes, so that a piece of a shape looks like a piece of a digit: that is what makes the clutter
fragments of :mod:`visattn.data.scenes` hard for global pooling.

A sprite is rendered once per class at a high "master" resolution and then rotated and scaled down (which
anti-aliases it) to the requested size. :class:`SpriteBank` caches every (class, size, rotation) mask it has
produced, so a scene generator pays for Pillow only the first time it needs a given glyph.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CLASS_NAMES",
    "COLOUR_NAMES",
    "DIGIT_NAMES",
    "PALETTE",
    "PLURAL_NAMES",
    "SHAPE_NAMES",
    "SpriteBank",
    "render_master",
    "sprite_bank",
]

DIGIT_NAMES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
CLASS_NAMES: tuple[str, ...] = DIGIT_NAMES + SHAPE_NAMES
"""Class names, digits first (label i is digit i for i < 10), then shapes."""

PLURAL_NAMES: dict[str, str] = {
    **{name: name + "s" for name in CLASS_NAMES},
    "six": "sixes",
    "cross": "crosses",
}

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 230, 40),
    "magenta": (230, 60, 230),
    "cyan": (40, 225, 230),
    "white": (245, 245, 245),
    "orange": (255, 145, 20),
}
"""Named object colours (RGB, 0-255); every one of them stands out on the scenes' dark backgrounds."""
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

MASTER_SIZE = 128  # canvas side for the master rendering; ~8x the largest sprite, so downscaling anti-aliases
_STROKE = 12  # stroke width in master pixels: the font's own stroke at this size (measured: 11-12 px)
_EXTENT = 96  # longest side of a master shape, close to the font's digit height at MASTER_SIZE


def _regular_polygon(num_sides: int, radius: float, centre: float, phase: float) -> list[tuple[float, float]]:
    """Vertices of a regular polygon; ``phase`` in radians, 0 puts a vertex straight up."""
    return [
        (centre + radius * math.sin(phase + 2 * math.pi * k / num_sides),
         centre - radius * math.cos(phase + 2 * math.pi * k / num_sides))
        for k in range(num_sides)
    ]


def _outline(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]]) -> None:
    """Draw a closed polyline with round joins at the shared stroke width."""
    draw.line(points + [points[0]], fill=255, width=_STROKE, joint="curve")
    radius = _STROKE / 2  # round caps so that corners are closed and look like pen strokes
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)


def _draw_shape(draw: ImageDraw.ImageDraw, name: str) -> None:
    c = MASTER_SIZE / 2
    half = _EXTENT / 2
    inner = half - _STROKE / 2  # the stroke is centred on the path; keep its outer edge at the extent
    if name == "circle":
        draw.ellipse([c - half, c - half, c + half, c + half], outline=255, width=_STROKE)
    elif name == "square":
        side = inner * 0.86  # a square reads larger than a circle of the same extent; shrink it a little
        _outline(draw, [(c - side, c - side), (c + side, c - side), (c + side, c + side), (c - side, c + side)])
    elif name == "triangle":
        # Equilateral, pointing up; shifted down so that its bounding box is centred.
        points = _regular_polygon(3, inner * 1.12, c, 0.0)
        _outline(draw, [(x, y + inner * 0.25) for x, y in points])
    elif name == "star":
        points = []
        for k in range(10):
            radius = inner * 1.05 if k % 2 == 0 else inner * 0.45
            angle = math.pi * k / 5
            points.append((c + radius * math.sin(angle), c + inner * 0.1 - radius * math.cos(angle)))
        _outline(draw, points)
    elif name == "cross":
        w = _STROKE / 2
        draw.rectangle([c - w, c - half, c + w, c + half], fill=255)
        draw.rectangle([c - half, c - w, c + half, c + w], fill=255)
    elif name == "diamond":
        # Taller than wide so that it never reads as a square rotated by 45 degrees.
        _outline(draw, [(c, c - inner), (c + inner * 0.62, c), (c, c + inner), (c - inner * 0.62, c)])
    else:
        raise ValueError(f"unknown shape {name!r}; valid shapes: {', '.join(SHAPE_NAMES)}")


def render_master(class_index: int) -> Image.Image:
    """Render one class at master resolution.

    Args:
        class_index: index into :data:`CLASS_NAMES`.

    Returns:
        A mode ``"L"`` image (alpha, 0-255) cropped tightly around the glyph.
    """
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index {class_index} out of range [0, {len(CLASS_NAMES)})")
    canvas = Image.new("L", (MASTER_SIZE, MASTER_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    if class_index < len(DIGIT_NAMES):
        font = ImageFont.load_default(size=MASTER_SIZE * 3 // 4)  # digit height ~ _EXTENT at this size
        draw.text((MASTER_SIZE / 2, MASTER_SIZE / 2), str(class_index), fill=255, font=font, anchor="mm")
    else:
        _draw_shape(draw, CLASS_NAMES[class_index])
    box = canvas.getbbox()
    assert box is not None, f"sprite {CLASS_NAMES[class_index]} rendered empty"
    return canvas.crop(box)


class SpriteBank:
    """Alpha masks of every class at any (size, rotation), rendered on first use and cached.

    Sizes are whole pixels (the longest side of the unrotated glyph) and rotations are rounded to
    ``rotation_step`` degrees, so the cache stays small (16 classes x ~30 sizes x ~7 rotations) and a
    scene generator spends its time compositing rather than in Pillow.

    Args:
        rotation_step: rotation quantum in degrees.
    """

    def __init__(self, *, rotation_step: float = 5.0) -> None:
        if rotation_step <= 0:
            raise ValueError(f"rotation_step must be positive, got {rotation_step}")
        self.rotation_step = rotation_step
        self._masters = [render_master(k) for k in range(len(CLASS_NAMES))]
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def mask(self, class_index: int, size: int, rotation: float = 0.0) -> np.ndarray:
        """Alpha mask of one sprite.

        Args:
            class_index: index into :data:`CLASS_NAMES`.
            size: longest side of the unrotated glyph in pixels (>= 4).
            rotation: counter-clockwise rotation in degrees (rounded to ``rotation_step``).

        Returns:
            float32 array (h, w) in [0, 1], cropped tightly around the rotated glyph. Treat it as read-only:
            it is shared through the cache.
        """
        step = int(round(rotation / self.rotation_step))
        key = (int(class_index), int(size), step)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if size < 4:
            raise ValueError(f"sprite size must be at least 4 pixels, got {size}")
        master = self._masters[class_index]
        angle = step * self.rotation_step
        rotated = master.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) if angle else master
        factor = size / max(master.size)  # scale relative to the unrotated glyph, so rotation keeps the size
        width = max(1, round(rotated.width * factor))
        height = max(1, round(rotated.height * factor))
        small = rotated.resize((width, height), resample=Image.Resampling.BOX)
        alpha = np.asarray(small, dtype=np.float32) / 255.0
        rows = np.flatnonzero(alpha.max(axis=1) > 0.02)
        cols = np.flatnonzero(alpha.max(axis=0) > 0.02)
        alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        alpha[alpha <= 0.02] = 0.0  # drop the faint resampling halo so masks and boxes stay tight
        alpha.setflags(write=False)
        self._cache[key] = alpha
        return alpha


@functools.lru_cache(maxsize=4)
def sprite_bank(rotation_step: float = 5.0) -> SpriteBank:
    """The process-wide :class:`SpriteBank` for ``rotation_step`` (a memoised cache, built on first call).

    The bank only memoises pure renderings, so sharing it never changes what a scene looks like; each worker
    process builds its own on first use.
    """
    return SpriteBank(rotation_step=rotation_step)
