"""Detection metrics: COCO mAP through pycocotools, and how well each detection's attention is localised.

COCO mAP is computed with the reference implementation (``pycocotools.cocoeval.COCOeval``) on ``COCO``
objects built in memory from our predictions and ground truth: no files, and its progress prints are captured.
Values follow COCO's convention: ``-1.0`` when a quantity is undefined (e.g. no ground truth of that size).

Attention localisation asks whether a detection "looked at" its object: each kept query's attention map is
up-sampled to the image, renormalised to sum to 1, and its energy (mass) inside the predicted box and inside the
matched ground-truth box is measured (with :mod:`visattn.metrics.localisation`, the same definitions as for
classification). The uniform baseline is the box's area fraction: a map that ignores the
image puts exactly that much mass in any box.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from visattn.boxes import box_iou, xyxy_to_xywh
from visattn.metrics.localisation import box_area_fraction, energy_in_box

__all__ = ["attention_localization", "coco_map"]

_SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def _coco_from_dict(dataset: dict) -> Any:
    from pycocotools.coco import COCO  # optional dependency ("coco" extra); imported when used

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(
    predictions: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    class_names: Sequence[str],
    *,
    category_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box mAP of a set of detections.

    Args:
        predictions: per image ``boxes`` (D, 4) xyxy pixels, ``scores`` (D,), ``labels`` (D,) contiguous.
        targets: per image (same order) ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) contiguous, optionally
            ``crowd_boxes``/``crowd_labels`` (detections on crowds are neither rewarded nor punished).
        class_names: K class names, index = contiguous label.
        category_ids: COCO ids of the K classes (only used to label the internal COCO objects); ``1..K``
            when ``None``.

    Returns:
        ``map`` (AP at IoU .50:.95), ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large`` and
        ``ap/<class name>`` per class; each in [0, 1], or -1.0 when undefined.
    """
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} images")
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(ids) != len(class_names):
        raise ValueError(f"{len(ids)} category_ids for {len(class_names)} class names")
    categories = [{"id": cat_id, "name": name} for cat_id, name in zip(ids, class_names)]
    images = [{"id": i + 1} for i in range(len(targets))]
    gt_anns: list[dict] = []
    dt_anns: list[dict] = []
    for image_id, (pred, target) in enumerate(zip(predictions, targets), start=1):
        for prefix, crowd in (("", 0), ("crowd_", 1)):
            if prefix + "boxes" not in target:
                continue
            _append(gt_anns, image_id, target[prefix + "boxes"], target[prefix + "labels"], ids, crowd=crowd)
        _append(dt_anns, image_id, pred["boxes"], pred["labels"], ids, scores=pred["scores"])

    coco_gt = _coco_from_dict({"images": images, "annotations": gt_anns, "categories": categories})
    coco_dt = _coco_from_dict({"images": images, "annotations": dt_anns, "categories": categories})
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    results = {key: float(value) for key, value in zip(_SUMMARY_KEYS, evaluator.stats[:6])}
    precision = evaluator.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    for k, name in enumerate(class_names):
        values = precision[:, :, k, 0, -1]  # all areas, the largest maxDets
        defined = values[values > -1]
        results[f"ap/{name}"] = float(defined.mean()) if defined.size else -1.0
    return results


def _append(anns: list[dict], image_id: int, boxes: Tensor, labels: Tensor, ids: list[int], *,
            crowd: int = 0, scores: Tensor | None = None) -> None:
    """Add one image's boxes to a COCO annotation list (ids start at 1: COCOeval treats id 0 as unmatched)."""
    xywh = xyxy_to_xywh(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)).tolist()
    labels_list = torch.as_tensor(labels).reshape(-1).tolist()
    scores_list = torch.as_tensor(scores).reshape(-1).tolist() if scores is not None else [None] * len(xywh)
    if not len(xywh) == len(labels_list) == len(scores_list):
        raise ValueError(f"image {image_id}: {len(xywh)} boxes, {len(labels_list)} labels, "
                         f"{len(scores_list)} scores")
    for box, label, score in zip(xywh, labels_list, scores_list):
        if not 0 <= label < len(ids):
            raise ValueError(f"image {image_id}: label {label} outside [0, {len(ids)})")
        ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": ids[label], "bbox": box,
               "area": box[2] * box[3], "iscrowd": crowd}
        if score is not None:
            ann["score"] = float(score)
        anns.append(ann)


def _match_by_iou(pred: dict[str, Tensor], target: dict[str, Tensor], iou_threshold: float) -> list[int]:
    """Greedy, score-ordered matching of detections to same-label ground truth; -1 where unmatched."""
    num_pred = len(pred["boxes"])
    matched = [-1] * num_pred
    if num_pred == 0 or len(target["boxes"]) == 0:
        return matched
    iou = box_iou(pred["boxes"].float(), target["boxes"].float())  # (D, N)
    same = pred["labels"].reshape(-1, 1) == target["labels"].reshape(1, -1)
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    taken: set[int] = set()
    for d in torch.argsort(pred["scores"], descending=True).tolist():
        for g in torch.argsort(iou[d], descending=True).tolist():
            if iou[d, g] < iou_threshold:
                break
            if g not in taken:
                taken.add(g)
                matched[d] = g
                break
    return matched


def attention_localization(
    predictions: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """How much of each detection's attention falls on its predicted and on its ground-truth object.

    Detections are matched to ground truth of the same label greedily by score at IoU >= ``iou_threshold``
    (the usual evaluation rule); unmatched detections count towards the predicted-box numbers only.

    Args:
        predictions: per image ``boxes`` (D, 4) xyxy pixels, ``scores`` (D,), ``labels`` (D,) and
            ``attention`` (D, H', W'): the kept queries' maps (see ``Detector.postprocess``).
        targets: per image ``boxes`` (N, 4) xyxy pixels and ``labels`` (N,).
        image_sizes: per image ``(H, W)``.

    Returns:
        ``energy_in_pred_box`` and ``baseline_pred_box`` (means over detections), ``energy_in_gt_box`` and
        ``baseline_gt_box`` (means over matched detections), ``num_detections``, ``num_matched``;
        NaN-free: means over nothing are 0.0.
    """
    sums: dict[str, list[Tensor]] = {"energy_in_pred_box": [], "baseline_pred_box": [], "energy_in_gt_box": [],
                                     "baseline_gt_box": []}
    for pred, target, size in zip(predictions, targets, image_sizes, strict=True):
        attention, size = pred["attention"].cpu(), (int(size[0]), int(size[1]))
        if len(attention) == 0:
            continue
        sums["energy_in_pred_box"].append(energy_in_box(attention, pred["boxes"].cpu(), size))
        sums["baseline_pred_box"].append(box_area_fraction(pred["boxes"].cpu(), size))
        matched = _match_by_iou(pred, target, iou_threshold)
        keep = [d for d, g in enumerate(matched) if g >= 0]
        if keep:
            gt_boxes = target["boxes"].cpu()[[matched[d] for d in keep]]  # (M, 4)
            sums["energy_in_gt_box"].append(energy_in_box(attention[keep], gt_boxes, size))
            sums["baseline_gt_box"].append(box_area_fraction(gt_boxes, size))
    results = {}
    for key, parts in sums.items():
        values = torch.cat(parts) if parts else torch.zeros(0)
        results[key] = float(values.mean()) if values.numel() else 0.0
    results["num_detections"] = float(sum(len(p["boxes"]) for p in predictions))
    results["num_matched"] = float(sum(len(part) for part in sums["energy_in_gt_box"]))
    return results
