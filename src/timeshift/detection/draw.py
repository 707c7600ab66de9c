"""Boxes, labels and scores drawn on frames (PIL): the annotated video of ``timeshift stream``
and the example frames of the detection demo.

Each class has its own colour (hues a golden angle apart, so neighbouring class indices never
look alike, for any number of classes); a label is the class name and the score on a filled box
of the class colour, in black or white, whichever reads better on it.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from timeshift.detection.structures import Detections

__all__ = ["class_colour", "draw_detections", "enlarge"]

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949  # hue step: consecutive classes far apart


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index`` (the same in every frame and every run)."""
    hue = (0.05 + index * GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def enlarge(image: np.ndarray, min_width: int) -> tuple[np.ndarray, int]:
    """``(image, factor)``: ``image`` enlarged by the smallest integer ``factor`` (nearest
    neighbour) that makes it at least ``min_width`` wide (``factor = 1``: unchanged)."""
    factor = max(1, -(-min_width // image.shape[1]))
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    return image, factor


def _label_name(classes: Sequence[str] | None, index: int) -> str:
    return classes[index] if classes and 0 <= index < len(classes) else str(index)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    classes: Sequence[str] | None = None,
    *,
    score_threshold: float = 0.3,
    min_width: int = 0,
) -> np.ndarray:
    """``image`` with the boxes of ``detections`` whose score is at least ``score_threshold``,
    each labelled ``"<class> <score>"``; the input is not changed.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        detections: boxes in ``image``'s pixels (``x1, y1, x2, y2``, continuous: the box
            covers pixel columns ``x1 .. x2 - 1``).
        classes: class names by index (``None``: the index is shown).
        score_threshold: boxes scoring lower are not drawn.
        min_width: first enlarge the image by an integer factor (nearest neighbour) until it
            is at least this wide, so labels stay readable on small frames; boxes follow.

    Returns:
        A new ``(H', W', 3)`` uint8 image (``H' = H``, ``W' = W`` unless enlarged).
    """
    from PIL import Image, ImageDraw

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    image, factor = enlarge(image, min_width)
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    side = min(image.shape[:2])
    line = max(2, round(side / 160))
    font = _font(max(11, side // 22))
    keep = np.flatnonzero(detections.scores >= score_threshold)
    # the best last, so that its box and label are on top where boxes overlap
    for i in keep[::-1]:
        x1, y1, x2, y2 = (round(float(v) * factor) for v in detections.boxes[i])
        colour = class_colour(int(detections.labels[i]))
        # PIL's rectangle includes its far corner: the box's last pixel is x2 - 1
        corners = (x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))
        draw.rectangle(corners, outline=colour, width=line)
        text = f"{_label_name(classes, int(detections.labels[i]))} {detections.scores[i]:.2f}"
        _draw_label(draw, text, corners, colour, font, canvas.size)
    return np.asarray(canvas)


def _draw_label(draw, text: str, corners, colour, font, size: tuple[int, int]) -> None:
    """The label on a filled box just above the box's top-left corner, or inside the box's top
    when there is no room above; kept within the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0, corners[0]), max(0, size[0] - width))
    y = corners[1] - height if corners[1] - height >= 0 else corners[1]
    y = min(y, max(0, size[1] - height))
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_colour(colour), font=font)
