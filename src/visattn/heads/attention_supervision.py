"""Attention supervision from word-to-object alignments (the "strong supervision" of Liu et al., AAAI 2017).

When the data says which object each caption word names (procedural scenes do, COCO does not), the
attention a captioner uses to emit that word can be trained to fall on the object:

    loss_attention_sup = mean over aligned words w of  −log( mass of α_w inside the region of w's object )

The mass is measured exactly as :mod:`visattn.metrics.attention_correctness` scores it: the grid map is
up-sampled bilinearly to the image, renormalised, and summed inside the region (the object's box by
default, its mask, or ``box_and_mask``: the mean of the two masses, a region of weight 1 on the glyph's pixels
and ½ on the rest of its box). Bilinear up-sampling is linear, so for a grid map α (L cells)

    mass = Σ_i α_i r_i / Σ_i α_i u_i,    r_i = Σ_{p in region} U_i(p),   u_i = Σ_p U_i(p),

with U_i the up-sampled image of cell i alone: the per-cell weights ``r`` (one row per object) and ``u``
are computed once per batch by :func:`attention_targets`, and the loss is two dot products per word.

Step indexing follows the captioner: step t's attention is the map used to emit word t of the caption (the
word after ``<start>`` is step 0), so word t's object is the alignment's entry t; ``<end>`` is not aligned.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from visattn.data.caption_data import teacher_forced_objects
from visattn.metrics.localisation import box_masks

__all__ = ["REGIONS", "AttentionTargets", "attention_targets", "cell_weights", "loss_attention_sup"]

REGIONS = ("box", "mask", "box_and_mask")
_EPS = 1e-6  # inside the log: a map with no mass on the object costs −log(1e-6) ≈ 13.8, not infinity


@functools.lru_cache(maxsize=16)
def _upsampled_cells(grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """(L, H, W): the bilinear up-sampling of each grid cell alone (the columns of the linear map U)."""
    cells = grid[0] * grid[1]
    basis = torch.eye(cells).view(cells, 1, *grid)  # one map per cell, (L, 1, h, w)
    return F.interpolate(basis, size=size, mode="bilinear", align_corners=False).squeeze(1).clamp_min(0)


def cell_weights(regions: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per-cell weights of regions for the exact up-sampled mass (module docstring).

    Args:
        regions: (N, H, W) regions at image resolution: bool, or float weights in [0, 1].
        grid: the attention grid (h, w).

    Returns:
        ``r`` (N, L): the up-sampled mass of each cell inside each region; ``u`` (L,): its total mass.
    """
    if regions.dim() != 3:
        raise ValueError(f"cell_weights: regions must be (N, H, W), got {tuple(regions.shape)}")
    cells = _upsampled_cells(tuple(int(g) for g in grid), tuple(int(s) for s in regions.shape[-2:]))  # (L, H, W)
    inside = regions.flatten(1).float() @ cells.flatten(1).t()  # (N, H·W) @ (H·W, L) -> (N, L)
    return inside, cells.flatten(1).sum(dim=1)


class AttentionTargets(dict):
    """What :func:`loss_attention_sup` needs for one batch (a dict, so it moves with ``.to`` per tensor).

    Keys: ``objects`` (B, T-1) int64, the object index each step's word names or -1; ``inside`` (B, N, L)
    the cell weights ``r`` of each image's N objects (padded with zeros); ``total`` (L,) the weights ``u``.
    """

    def to(self, device: torch.device) -> AttentionTargets:
        return AttentionTargets({k: v.to(device, non_blocking=True) for k, v in self.items()})


def attention_targets(batch: Mapping[str, Any], grid: tuple[int, int], *, region: str = "box") -> AttentionTargets:
    """Supervision targets of a collated caption batch (:func:`visattn.data.caption_data.collate`).

    Args:
        batch: with ``tokens`` (B, T), ``lengths``, ``captions``, ``caption_index`` and, per image,
            ``alignment``, ``masks`` (N, H, W) and, for the box regions, ``boxes``.
        grid: the attention grid (h, w) of the captioner's outputs.
        region: "box", "mask" or "box_and_mask".

    Returns:
        :class:`AttentionTargets`. Rows whose encoded caption does not match its alignment word for word
        (truncation, punctuation) get no aligned step.

    Raises:
        ValueError: an unknown region, or a batch without alignments (e.g. Karpathy or COCO captions):
            attention supervision needs data that says which object each word names.
    """
    if region not in REGIONS:
        raise ValueError(f"attention supervision: unknown region {region!r}; valid: {', '.join(REGIONS)}")
    if batch.get("alignment") is None or batch.get("masks") is None:
        raise ValueError("attention supervision needs word-to-object alignments and object masks in the data "
                         "(procedural scenes have them; Karpathy/COCO captions do not): turn it off for this data")
    tokens = batch["tokens"]
    size = tuple(batch["masks"][0].shape[-2:])
    steps = tokens.shape[1] - 1
    objects = torch.full((len(tokens), steps), -1, dtype=torch.long)
    for i, index in enumerate(batch["caption_index"]):
        length = int(batch["lengths"][i])
        aligned = teacher_forced_objects(batch["captions"][i][index], batch["alignment"][i][index], tokens[i, :length])
        if aligned is not None:
            objects[i, : len(aligned)] = torch.tensor(aligned, dtype=torch.long)
    # Every object of the batch at once: one (M, H, W) stack of regions and one product for their cell weights
    # (image by image, this was most of the targets' cost, about a tenth of a supervised training step).
    counts = [len(m) for m in batch["masks"]]
    inside = torch.zeros(len(tokens), max(1, *counts), grid[0] * grid[1])
    if region != "mask":
        box = box_masks(torch.cat([torch.as_tensor(b).reshape(-1, 4) for b in batch["boxes"]]), size)  # (M, H, W)
    if region != "box":
        mask = torch.cat([torch.as_tensor(m).reshape(-1, *size) for m in batch["masks"]]).bool()  # (M, H, W)
    if region == "box":
        regions = box
    elif region == "mask":
        regions = mask
    else:  # weight 1 on the glyph, ½ on the rest of its box: the mean of the two masses
        regions = (box.float() + mask.float()) / 2
    weights, total = cell_weights(regions, grid)  # (M, L), (L,)
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (M,) image of each object
    slots = torch.cat([torch.arange(n) for n in counts])  # (M,) its index in the image
    inside[rows, slots] = weights
    return AttentionTargets(objects=objects, inside=inside, total=total)


def loss_attention_sup(attention: Tensor, targets: Mapping[str, Tensor]) -> Tensor:
    """Mean over aligned words of −log(attention mass inside the word's object); 0 when no word is aligned.

    Args:
        attention: (B, T-1, h, w) the captioner's teacher-forced maps (``outputs["attention"]``).
        targets: :func:`attention_targets` of the same batch (on the attention's device).

    Returns:
        A scalar (differentiable w.r.t. ``attention``).
    """
    objects, inside, total = targets["objects"], targets["inside"], targets["total"]
    batch, steps = attention.shape[:2]
    if objects.shape != (batch, steps):
        raise ValueError(f"loss_attention_sup: targets for {tuple(objects.shape)} steps, attention has "
                         f"{(batch, steps)}")
    alpha = attention.flatten(2).float()  # (B, T-1, h, w) -> (B, T-1, L)
    rows, step = (objects >= 0).nonzero(as_tuple=True)  # the aligned words, (n,) each
    if rows.numel() == 0:
        return alpha.sum() * 0.0
    words = alpha[rows, step]  # (n, L)
    region = inside[rows, objects[rows, step]]  # (n, L)
    mass = (words * region).sum(dim=1) / (words @ total).clamp_min(1e-12)  # (n,)
    return -(mass.clamp(0, 1) + _EPS).log().mean()
