"""Set-prediction losses for the detector (DETR's ``SetCriterion``).

After Hungarian matching, every query has a target class: its matched object's label, or the extra
"no object" class K. The losses are

* ``loss_ce``: cross-entropy over K+1 classes for every query, the no-object class weighted by ``eos_coef``
  (most queries are empty; without the down-weighting the head learns to say "nothing" everywhere);
* ``loss_bbox``: L1 between matched predicted and target boxes (normalised cxcywh);
* ``loss_giou``: ``1 - GIoU`` of the same pairs;

the box terms summed over matched pairs and divided by the number of target boxes in the batch (at least 1,
so an image without objects gives zero box loss rather than a division by zero), the class term a weighted
mean over every query (each query weighs its target class's weight). Data-parallel training passes
``reduce_counts``, which turns this rank's two counts (boxes, summed class weights) into the counts over all
ranks divided by the world size: the averaged gradient is then the one process's on the global batch.
With auxiliary outputs the same terms are computed for every earlier decoder layer, with its own matching,
as ``loss_ce_0``, ``loss_bbox_0``, ... The total under ``"loss"`` is the ``weight_dict``-weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visattn.boxes import cxcywh_to_xyxy, generalized_box_iou, normalize_boxes
from visattn.heads.matcher import HungarianMatcher, Match

__all__ = ["SetCriterion", "targets_from_samples"]


def targets_from_samples(
    boxes: Sequence[Tensor], labels: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """Turn sample annotations (pixel xyxy) into criterion targets (normalised cxcywh).

    Args:
        boxes: per image (N_b, 4) pixel xyxy boxes.
        labels: per image (N_b,) int64 labels in ``[0, K)``.
        image_sizes: per image ``(H, W)`` of the image the boxes refer to.

    Returns:
        Per image ``{"boxes": (N_b, 4) normalised cxcywh, "labels": (N_b,)}``.
    """
    return [
        {"boxes": normalize_boxes(b.float().reshape(-1, 4), size), "labels": lab.long().reshape(-1)}
        for b, lab, size in zip(boxes, labels, image_sizes, strict=True)
    ]


class SetCriterion(nn.Module):
    """Matching plus the named loss terms of the detector.

    Args:
        num_classes: K, the number of object classes (the logits have K+1 entries, the last is "no object").
        matcher: the Hungarian matcher; a default one with DETR's cost weights when ``None``.
        eos_coef: weight of the no-object class in ``loss_ce``.
        loss_ce: weight of the classification term in the total.
        loss_bbox: weight of the L1 box term.
        loss_giou: weight of the GIoU term.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        loss_ce: float = 1.0,
        loss_bbox: float = 5.0,
        loss_giou: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 < eos_coef <= 1.0:
            raise ValueError(f"eos_coef must be in (0, 1], got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.weight_dict = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _terms(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], num_boxes: Tensor,
               class_weight_total: Tensor) -> dict:
        """``loss_ce``, ``loss_bbox``, ``loss_giou`` for one set of outputs (final or auxiliary)."""
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, expected num_classes + 1 = {self.num_classes + 1}"
            )
        matches: list[Match] = self.matcher(outputs, targets)
        # (image index, query index) of every matched pair, flattened over the batch.
        # The matches are on the CPU; non_blocking copies (a plain .to() would wait for the device's queue).
        device = logits.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        batch_idx = batch_idx.to(device, non_blocking=True)
        query_idx = torch.cat([q for q, _ in matches]).to(device, non_blocking=True)
        targets_idx = [j.to(t["labels"].device, non_blocking=True) for t, (_, j) in zip(targets, matches)]

        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, j in zip(targets, targets_idx)]).to(device)
        target_classes[batch_idx, query_idx] = matched_labels  # (B, Q): label or no-object
        # the weighted mean Σ w_y·ℓ / Σ w_y, its denominator counted before matching (see forward)
        loss_ce = F.cross_entropy(
            logits.float().transpose(1, 2),  # (B, K+1, Q): cross_entropy wants classes in dim 1
            target_classes,
            weight=self.class_weight.to(logits.device),
            reduction="sum",
        ) / class_weight_total

        src_boxes = pred_boxes[batch_idx, query_idx].float()  # (M, 4)
        tgt_boxes = torch.cat([t["boxes"][j] for t, j in zip(targets, targets_idx)]).to(src_boxes)  # (M, 4)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes)))  # (M,)
        loss_giou = (1.0 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: Sequence[dict[str, Tensor]], *,
                reduce_counts: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Compute every named term and the weighted total.

        Args:
            outputs: the detector's output dict: ``pred_logits`` (B, Q, K+1), ``pred_boxes`` (B, Q, 4)
                normalised cxcywh, optionally ``aux_outputs`` (list of dicts with the same two keys).
            targets: per image ``labels`` (N_b,) int64 in ``[0, K)`` and ``boxes`` (N_b, 4) normalised cxcywh.
            reduce_counts: maps this batch's (2,) counts (target boxes, summed class weights of the queries'
                targets) to the ones to divide by; data-parallel training gives the mean over ranks.

        Returns:
            ``loss`` (the weighted total) and the unweighted terms ``loss_ce``, ``loss_bbox``, ``loss_giou``,
            plus ``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i`` for auxiliary layer i; all scalars.
        """
        # One check over the whole batch: on a GPU every comparison read on the host is a sync.
        labels = torch.cat([t["labels"].reshape(-1) for t in targets]) if targets else torch.zeros(0)
        if labels.numel() and bool(((labels < 0) | (labels >= self.num_classes)).any()):
            for b, target in enumerate(targets):
                bad = target["labels"]
                if bad.numel() and (bad.min() < 0 or bad.max() >= self.num_classes):
                    raise ValueError(
                        f"image {b} of the batch has labels outside [0, {self.num_classes}): {bad.tolist()}"
                    )
        batch, num_queries = outputs["pred_logits"].shape[:2]
        num_boxes = sum(len(t["labels"]) for t in targets)
        # Every layer's matching pairs min(Q, N_b) queries of image b with objects (weight 1 each); the
        # other queries target "no object" (weight eos_coef). Known before matching, so one count serves all.
        matched = sum(min(num_queries, len(t["labels"])) for t in targets)
        weight_total = matched + (batch * num_queries - matched) * self.eos_coef
        counts = torch.tensor([num_boxes, weight_total], dtype=torch.float32)
        counts = counts.to(outputs["pred_logits"].device, non_blocking=True)
        if reduce_counts is not None:
            counts = reduce_counts(counts)
        box_count, class_weight_total = counts[0].clamp_min(1.0), counts[1].clamp_min(1e-6)
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=outputs["pred_logits"].device)
        for suffix, layer_outputs in layers:
            for name, value in self._terms(layer_outputs, targets, box_count, class_weight_total).items():
                losses[name + suffix] = value
                total = total + self.weight_dict[name] * value
        return {"loss": total, **losses}
