"""The scene model: 1-3 coloured shapes on a 3 x 3 grid, sampled from a seeded stream and rendered with
Pillow (image + per-pixel kind mask). Every format of the world is drawn from these scenes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw


__all__ = ['KINDS', 'COLORS', 'SIZES', 'ROWS', 'Shape', 'Scene', 'sample_scene', 'render_scene']

KINDS: Tuple[str, ...] = ("circle", "square", "triangle")
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (40, 75, 215), "yellow": (235, 200, 30),
}
SIZES: Tuple[str, ...] = ("small", "large")
_HALF_EXTENT = {"small": 0.08, "large": 0.135}  # half side length in units of the image size
_CELL_MARGIN = 0.025  # min distance of a shape to its grid cell border: shapes never touch
ROWS = ("at the top", "in the middle", "at the bottom")



@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape; centre and half extent in units of the image side (resolution independent)."""

    kind: str
    color: str
    size: str
    cx: float
    cy: float
    row: int  # grid row 0..2, named by ROWS

    @property
    def half(self) -> float:
        return _HALF_EXTENT[self.size]

    def polygon(self, image_size: int) -> List[Tuple[float, float]]:
        """Vertices in pixel coordinates; the circle is a 24-gon so mask and polygon agree."""
        s = float(image_size)
        cx, cy, h = self.cx * s, self.cy * s, self.half * s
        if self.kind == "square":
            return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        if self.kind == "triangle":
            return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        angles = [2 * math.pi * (i + 0.5) / 24 for i in range(24)]  # no vertex on an axis: no 1-px spikes
        return [(cx + h * math.cos(a), cy + h * math.sin(a)) for a in angles]

    def phrase(self, with_size: bool = True) -> str:
        return f"a {self.size} {self.color} {self.kind}" if with_size else f"a {self.color} {self.kind}"


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: Tuple[Shape, ...]
    background: Tuple[int, int, int]
    textured: bool
    texture_seed: int

    @property
    def count(self) -> int:
        return len(self.shapes)

    def count_where(self, kind: Optional[str] = None, color: Optional[str] = None) -> int:
        return sum(1 for s in self.shapes
                   if (kind is None or s.kind == kind) and (color is None or s.color == color))


def sample_scene(rng: np.random.Generator, min_shapes: int = 1, max_shapes: int = 3,
                 textured_fraction: float = 0.5, kind: Optional[str] = None,
                 color: Optional[str] = None) -> Scene:
    """Random scene: shapes in distinct cells of a 3x3 grid (no overlaps), jittered inside the cell."""
    if not 1 <= min_shapes <= max_shapes <= 9:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes <= 9, got {min_shapes}, {max_shapes}")
    n = int(rng.integers(min_shapes, max_shapes + 1))
    cells = rng.choice(9, size=n, replace=False)
    shapes = []
    for cell in cells:
        size = SIZES[int(rng.integers(len(SIZES)))]
        half = _HALF_EXTENT[size]
        room = 1 / 6 - half - _CELL_MARGIN
        row, col = divmod(int(cell), 3)
        cx = (col + 0.5) / 3 + float(rng.uniform(-room, room))
        cy = (row + 0.5) / 3 + float(rng.uniform(-room, room))
        shapes.append(Shape(kind=kind or KINDS[int(rng.integers(len(KINDS)))],
                            color=color or list(COLORS)[int(rng.integers(len(COLORS)))],
                            size=size, cx=cx, cy=cy, row=row))
    grey = int(rng.integers(200, 246))
    tint = rng.integers(-8, 9, size=3)
    background = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    textured = bool(rng.random() < textured_fraction)
    return Scene(shapes=tuple(shapes), background=background, textured=textured,
                 texture_seed=int(rng.integers(2 ** 31)))


def render_scene(scene: Scene, image_size: int) -> Tuple[Image.Image, np.ndarray]:
    """RGB image and an instance map (uint8, 0 = background, i + 1 = ``scene.shapes[i]``)."""
    canvas = np.empty((image_size, image_size, 3), dtype=np.int16)
    canvas[:] = scene.background
    if scene.textured:  # light texture: low-amplitude noise plus faint diagonal stripes
        trng = np.random.default_rng(scene.texture_seed)
        noise = trng.integers(-10, 11, size=(image_size, image_size, 1))
        yy, xx = np.mgrid[0:image_size, 0:image_size]
        stripes = (((xx + yy) // max(2, image_size // 16)) % 2 * 8)[..., None]
        canvas += (noise + stripes).astype(np.int16)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    instances = Image.new("L", (image_size, image_size), 0)
    draw, draw_inst = ImageDraw.Draw(image), ImageDraw.Draw(instances)
    for i, shape in enumerate(scene.shapes):
        poly = shape.polygon(image_size)
        draw.polygon(poly, fill=COLORS[shape.color])
        draw_inst.polygon(poly, fill=i + 1)
    return image, np.asarray(instances, dtype=np.uint8)
