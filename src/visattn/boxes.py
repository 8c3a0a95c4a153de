"""Box formats and box geometry for detection.

Three conventions meet in detection code, and mixing them up is the classic silent bug, so every conversion
goes through this file:

* **xyxy pixels** ``(x1, y1, x2, y2)``: what samples, readers, post-processing and figures use.
* **cxcywh normalised** ``(cx, cy, w, h)`` in ``[0, 1]`` relative to the image size: what the detector
  predicts and what the matcher and losses compare (independent of the image size).
* **xywh pixels** ``(x, y, w, h)``: the COCO ``bbox`` field.

The functions are thin wrappers on :mod:`torchvision.ops` so the maths is the audited one; they add the
normalisation by image size and a validation helper the data readers use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_area",
    "box_iou",
    "cxcywh_to_xyxy",
    "denormalize_boxes",
    "generalized_box_iou",
    "normalize_boxes",
    "validate_box",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``(cx, cy, w, h)`` boxes to ``(x1, y1, x2, y2)``.

    Args:
        boxes: (..., 4) boxes in any unit.

    Returns:
        (..., 4) boxes in the same unit.
    """
    return _convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``(x1, y1, x2, y2)`` boxes to ``(cx, cy, w, h)``.

    Args:
        boxes: (..., 4) boxes in any unit.

    Returns:
        (..., 4) boxes in the same unit.
    """
    return _convert(boxes, "xyxy", "cxcywh")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert COCO ``(x, y, w, h)`` boxes to ``(x1, y1, x2, y2)``.

    Args:
        boxes: (..., 4) boxes in any unit.

    Returns:
        (..., 4) boxes in the same unit.
    """
    return _convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert ``(x1, y1, x2, y2)`` boxes to COCO ``(x, y, w, h)``.

    Args:
        boxes: (..., 4) boxes in any unit.

    Returns:
        (..., 4) boxes in the same unit.
    """
    return _convert(boxes, "xyxy", "xywh")


def _convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dimension, got shape {tuple(boxes.shape)}")
    flat = boxes.reshape(-1, 4)  # (N, 4): torchvision converts 2-D tensors only
    return box_convert(flat, in_fmt=in_fmt, out_fmt=out_fmt).reshape(boxes.shape)


def _scale(image_size: tuple[int, int] | Tensor, like: Tensor) -> Tensor:
    """(..., 4) multiplier ``(W, H, W, H)`` from ``(H, W)`` sizes, one per image or shared."""
    size = torch.as_tensor(image_size, dtype=like.dtype, device=like.device)
    if size.shape[-1] != 2:
        raise ValueError(f"image_size must be (H, W) or (B, 2) of (H, W), got shape {tuple(size.shape)}")
    height, width = size[..., 0], size[..., 1]
    return torch.stack([width, height, width, height], dim=-1)  # (..., 4)


def normalize_boxes(boxes_xyxy: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Pixel ``xyxy`` boxes to normalised ``cxcywh`` in ``[0, 1]``.

    Args:
        boxes_xyxy: (N, 4) boxes in pixels.
        image_size: ``(H, W)`` of the image the boxes belong to.

    Returns:
        (N, 4) boxes ``(cx, cy, w, h)`` divided by the image width/height.
    """
    return xyxy_to_cxcywh(boxes_xyxy) / _scale(image_size, boxes_xyxy)


def denormalize_boxes(boxes_cxcywh: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Normalised ``cxcywh`` boxes to pixel ``xyxy`` (the inverse of :func:`normalize_boxes`).

    Args:
        boxes_cxcywh: (N, 4) or (B, Q, 4) normalised boxes.
        image_size: ``(H, W)`` shared by all boxes, or a (B, 2) tensor of ``(H, W)`` for (B, Q, 4) boxes.

    Returns:
        Boxes of the same shape, ``(x1, y1, x2, y2)`` in pixels.
    """
    scale = _scale(image_size, boxes_cxcywh)
    if boxes_cxcywh.dim() == 3 and scale.dim() == 2:
        scale = scale[:, None, :]  # (B, 1, 4): one size per image, shared by its queries
    return cxcywh_to_xyxy(boxes_cxcywh) * scale


def validate_box(
    box_xyxy: Sequence[float],
    image_size: tuple[int, int],
    *,
    tolerance: float = 1.0,
) -> str | None:
    """Check one pixel box against its image; return why it is invalid, or ``None`` when it is fine.

    A box is valid when all four numbers are finite, it has positive width and height, and it lies inside the
    image up to ``tolerance`` pixels (annotation tools often round a coordinate one pixel past the border).

    Args:
        box_xyxy: ``(x1, y1, x2, y2)`` in pixels.
        image_size: ``(H, W)`` of the image.
        tolerance: pixels a box may extend past the image border.

    Returns:
        A short reason (``"non-finite coordinates"``, ``"non-positive width or height"``,
        ``"outside the image"``) or ``None``.
    """
    if len(box_xyxy) != 4:
        return f"expected 4 coordinates, got {len(box_xyxy)}"
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "non-finite coordinates"
    if x2 <= x1 or y2 <= y1:
        return "non-positive width or height"
    height, width = image_size
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        return "outside the image"
    return None
