"""Does the model look at the right place? Attention maps scored against ground-truth boxes.

Maps on the feature grid are up-sampled bilinearly to the image and renormalised to sum to one. Then:

- **pointing game** (Zhang et al., 2016): a hit when the map's arg-max pixel lies inside the box;
- **energy in box**: the share of the attention mass inside the box. A map that ignores the image
  (uniform) scores the box's area fraction, reported beside it as ``uniform_energy``.

A pixel (row y, column x) belongs to box (x1, y1, x2, y2) in pixels when its centre (x + ½, y + ½) lies
inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsample_maps", "box_masks", "pointing_game", "energy_in_box", "box_area_fraction", "LocalisationMeter"]


def upsample_maps(maps: Tensor, size: tuple[int, int], *, normalize: bool = True) -> Tensor:
    """Grid maps (B, h, w) -> image maps (B, H, W): bilinear, non-negative, each summing to one.

    The one grid-to-image up-sampling: the metrics here and in attention correctness score it, and the figures
    in :mod:`visattn.viz` draw it. ``normalize=False`` keeps the interpolated values (figures rescale to
    their peak); a map summing to zero stays zero either way.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, h, w), got {tuple(maps.shape)}")
    up = F.interpolate(maps.unsqueeze(1).float(), size=tuple(size), mode="bilinear", align_corners=False)
    up = up.squeeze(1).clamp_min(0)  # (B, 1, H, W) -> (B, H, W); no negative weight from negative input
    return up / up.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12) if normalize else up


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes (B, 4) xyxy pixels -> bool masks (B, H, W) of the pixels whose centres lie inside."""
    height, width = size
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5  # (H,)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5  # (W,)
    x1, y1, x2, y2 = (boxes[:, i, None].float() for i in range(4))  # each (B, 1)
    inside_x = (xs >= x1) & (xs <= x2)  # (B, W)
    inside_y = (ys >= y1) & (ys <= y2)  # (B, H)
    return inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W)


def pointing_game(maps: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,) bool: the arg-max of each up-sampled map lies inside its box."""
    up = upsample_maps(maps, size)  # (B, H, W)
    flat = up.flatten(1).argmax(dim=1)  # (B,)
    rows, cols = flat // size[1], flat % size[1]
    inside = box_masks(boxes, size)
    return inside[torch.arange(len(flat), device=flat.device), rows, cols]


def energy_in_box(maps: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,) float: attention mass inside each box, in [0, 1]."""
    up = upsample_maps(maps, size)
    return (up * box_masks(boxes, size)).sum(dim=(-2, -1))


def box_area_fraction(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,) float: the pixel share of each box; a uniform map's energy in box."""
    return box_masks(boxes, size).float().mean(dim=(-2, -1))


class LocalisationMeter:
    """Accumulates pointing game, energy in box and the uniform baseline over batches.

    ``update(attention (B, G, h, w) or (B, h, w), boxes (B, 4), size)``; several glimpses are averaged
    into one map per image before scoring.
    """

    def __init__(self) -> None:
        self.hits = 0.0
        self.energy = 0.0
        self.uniform = 0.0
        self.count = 0

    def update(self, attention: Tensor, boxes: Tensor, size: tuple[int, int]) -> None:
        maps = attention.mean(dim=1) if attention.dim() == 4 else attention  # (B, h, w)
        boxes = boxes.to(maps.device)
        self.hits += float(pointing_game(maps, boxes, size).sum())
        self.energy += float(energy_in_box(maps, boxes, size).sum())
        self.uniform += float(box_area_fraction(boxes, size).sum())
        self.count += len(maps)

    def merge(self, other: LocalisationMeter) -> LocalisationMeter:
        """Both meters' sums in this one (e.g. the shares of several processes); returns self."""
        self.hits += other.hits
        self.energy += other.energy
        self.uniform += other.uniform
        self.count += other.count
        return self

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"pointing_game": self.hits / n, "energy_in_box": self.energy / n, "uniform_energy": self.uniform / n}
