"""Hungarian matching between predicted queries and ground-truth objects (DETR's set assignment).

Each image's Q predictions are assigned one-to-one to its N <= Q targets so that the summed cost is minimal;
unassigned queries are trained to predict "no object". The cost of assigning query i to target j is

    w_class * (-p_i(class_j)) + w_bbox * ||b_i - b_j||_1 + w_giou * (-GIoU(b_i, b_j))

with boxes in normalised ``cxcywh`` (the L1 part) and converted to ``xyxy`` for the GIoU part. The cost matrix
for the whole batch is computed once, (B*Q, sum N), then split per image, because one big matrix product is
much cheaper than B small ones; only the assignment itself (scipy, on the CPU) runs per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from visattn.boxes import cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "Match"]

# One image's assignment: (query indices, target indices), both int64 of the same length N.
Match = tuple[Tensor, Tensor]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of predictions to targets.

    Args:
        cost_class: weight of the negative class probability.
        cost_bbox: weight of the L1 distance between normalised ``cxcywh`` boxes.
        cost_giou: weight of the negative generalised IoU.
    """

    def __init__(self, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrix(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """The batched cost of every query against every target of the batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) and ``pred_boxes`` (B, Q, 4) normalised cxcywh.
            targets: per image ``labels`` (N_b,) int64 and ``boxes`` (N_b, 4) normalised cxcywh.

        Returns:
            (B, Q, sum_b N_b) float cost on the CPU; only the block of image b's own targets is meaningful
            for image b.
        """
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_size, num_queries = logits.shape[:2]
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} predictions")
        prob = logits.flatten(0, 1).float().softmax(-1)  # (B*Q, K+1)
        boxes = pred_boxes.flatten(0, 1).float()  # (B*Q, 4)
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)  # (M,)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)  # (M, 4)
        if tgt_labels.numel() == 0:
            return torch.zeros(batch_size, num_queries, 0)
        cost = -self.cost_class * prob[:, tgt_labels]  # (B*Q, M)
        cost = cost + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        return cost.view(batch_size, num_queries, -1).cpu()  # (B, Q, M)

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> list[Match]:
        """Assign queries to targets, image by image.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) and ``pred_boxes`` (B, Q, 4) normalised cxcywh.
            targets: per image ``labels`` (N_b,) and ``boxes`` (N_b, 4) normalised cxcywh; N_b may be 0.

        Returns:
            Per image ``(query_idx, target_idx)``, int64 tensors of length ``min(Q, N_b)``, sorted by query.
        """
        num_queries = outputs["pred_logits"].shape[1]
        for b, target in enumerate(targets):
            if len(target["labels"]) > num_queries:
                raise ValueError(
                    f"image {b} of the batch has {len(target['labels'])} objects but the detector has only "
                    f"{num_queries} queries; raise num_queries"
                )
        cost = self.cost_matrix(outputs, targets)  # (B, Q, M)
        sizes = [len(t["labels"]) for t in targets]
        matches: list[Match] = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            cost_b = block[b]  # (Q, N_b): image b's queries against image b's targets only
            if not torch.isfinite(cost_b).all():
                raise ValueError(f"non-finite matching cost for image {b} of the batch (NaN in predictions?)")
            query_idx, target_idx = linear_sum_assignment(cost_b.numpy())
            matches.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return matches
