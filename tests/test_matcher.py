"""Box conversions, the Hungarian matcher and the set-prediction losses."""

from __future__ import annotations

import itertools

import pytest
import torch

from visattn.boxes import (
    cxcywh_to_xyxy,
    denormalize_boxes,
    generalized_box_iou,
    normalize_boxes,
    validate_box,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from visattn.heads.detection_loss import SetCriterion, targets_from_samples
from visattn.heads.matcher import HungarianMatcher


def random_cxcywh(*shape: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def random_outputs(batch: int, queries: int, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
            "pred_boxes": random_cxcywh(batch, queries, generator=g)}


def random_targets(sizes: list[int], classes: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(classes, (n,), generator=g), "boxes": random_cxcywh(n, generator=g)}
            for n in sizes]


# ---------------------------------------------------------------------------------------------- boxes


def test_box_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    boxes = random_cxcywh(2, 5, generator=g) * 64  # (2, 5, 4): batched shapes are kept
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(boxes)), boxes, atol=1e-4)
    xyxy = cxcywh_to_xyxy(boxes)
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy, atol=1e-4)
    assert xyxy.shape == (2, 5, 4)
    size = (48, 80)  # (H, W): not square, so swapped axes would show
    pixels = xyxy.reshape(-1, 4)
    assert torch.allclose(denormalize_boxes(normalize_boxes(pixels, size), size), pixels, atol=1e-3)


def test_box_conversion_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 20.0, 40.0]]
    normalised = normalize_boxes(xyxy, (100, 50))  # H=100, W=50
    assert torch.allclose(normalised, torch.tensor([[0.4, 0.4, 0.4, 0.4]]))
    per_image = denormalize_boxes(normalised.expand(2, 1, 4), torch.tensor([[100, 50], [200, 100]]))
    assert torch.allclose(per_image[1, 0], torch.tensor([20.0, 40.0, 60.0, 120.0]))


def test_box_conversion_rejects_wrong_width():
    with pytest.raises(ValueError, match="4 coordinates"):
        cxcywh_to_xyxy(torch.zeros(3, 5))


@pytest.mark.parametrize("box, reason", [
    ([0, 0, 10, 10], None),
    ([-0.5, 0, 10, 32.5], None),  # within the 1-pixel tolerance
    ([5, 5, 5, 9], "non-positive"),
    ([5, 5, 4, 9], "non-positive"),
    ([0, 0, float("nan"), 3], "non-finite"),
    ([20, 20, 40, 30], "outside"),
    ([-3, 0, 10, 10], "outside"),
])
def test_validate_box(box, reason):
    result = validate_box(box, (32, 32))
    assert (result is None) if reason is None else (reason in result)


# -------------------------------------------------------------------------------------------- matcher


def test_batched_matching_equals_matching_each_image_alone():
    matcher = HungarianMatcher()
    outputs = random_outputs(4, 7, 5)
    targets = random_targets([3, 0, 7, 1], 5)
    batched = matcher(outputs, targets)
    for b in range(4):
        single = matcher({k: v[b:b + 1] for k, v in outputs.items()}, targets[b:b + 1])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
        assert len(batched[b][0]) == len(targets[b]["labels"])


def test_matching_is_optimal_against_brute_force():
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    outputs = random_outputs(1, 5, 3, seed=3)
    targets = random_targets([3], 3, seed=4)
    cost = matcher.cost_matrix(outputs, targets)[0]  # (Q, N)
    query_idx, target_idx = matcher(outputs, targets)[0]
    found = cost[query_idx, target_idx].sum()
    best = min(sum(cost[q, j] for j, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    assert torch.isclose(found, torch.as_tensor(best))


def test_empty_targets_give_empty_matches():
    matcher = HungarianMatcher()
    outputs = random_outputs(3, 4, 2)
    for sizes in ([0, 0, 0], [0, 2, 0]):
        matches = matcher(outputs, random_targets(sizes, 2))
        assert [len(q) for q, _ in matches] == sizes
        assert all(q.dtype == torch.int64 and j.dtype == torch.int64 for q, j in matches)


def test_permuting_targets_permutes_the_assignment():
    matcher = HungarianMatcher()
    outputs = random_outputs(1, 8, 4, seed=5)
    target = random_targets([5], 4, seed=6)[0]
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = {"labels": target["labels"][perm], "boxes": target["boxes"][perm]}
    q1, t1 = matcher(outputs, [target])[0]
    q2, t2 = matcher(outputs, [permuted])[0]
    original_pairs = {(q, t) for q, t in zip(q1.tolist(), t1.tolist())}
    permuted_pairs = {(q, perm[t].item()) for q, t in zip(q2.tolist(), t2.tolist())}
    assert original_pairs == permuted_pairs


def test_perfect_predictions_match_themselves():
    target = random_targets([4], 3, seed=7)[0]
    order = torch.tensor([2, 5, 0, 4])  # object i is predicted by query order[i]
    logits = torch.full((1, 6, 4), -10.0)
    boxes = random_cxcywh(1, 6, generator=torch.Generator().manual_seed(8))
    logits[0, :, 3] = 10.0  # the other queries say "no object"
    logits[0, order, 3] = -10.0
    logits[0, order, target["labels"]] = 10.0
    boxes[0, order] = target["boxes"]
    query_idx, target_idx = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [target])[0]
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == dict(enumerate(order.tolist()))


def test_matcher_rejects_more_objects_than_queries():
    with pytest.raises(ValueError, match="num_queries"):
        HungarianMatcher()(random_outputs(1, 2, 3), random_targets([3], 3))


# --------------------------------------------------------------------------------------------- losses


def test_criterion_terms_and_total():
    criterion = SetCriterion(4, eos_coef=0.1, loss_ce=1.0, loss_bbox=5.0, loss_giou=2.0)
    outputs = random_outputs(2, 6, 4)
    outputs["aux_outputs"] = [random_outputs(2, 6, 4, seed=s) for s in (10, 11)]
    losses = criterion(outputs, random_targets([2, 3], 4))
    expected = {"loss"} | {f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    total = sum(criterion.weight_dict[n.rstrip("_0123456789")] * v for n, v in losses.items() if n != "loss")
    assert torch.isclose(losses["loss"], total)


def test_criterion_on_perfect_boxes_and_on_empty_targets():
    criterion = SetCriterion(3)
    target = random_targets([2], 3)[0]
    boxes = torch.cat([target["boxes"], random_cxcywh(3, generator=torch.Generator().manual_seed(2))])[None]
    losses = criterion({"pred_logits": torch.randn(1, 5, 4), "pred_boxes": boxes}, [target])
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    empty = random_targets([0, 0], 3)
    outputs = random_outputs(2, 5, 3)
    outputs["pred_logits"].requires_grad_(True)
    losses = criterion(outputs, empty)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    losses["loss"].backward()  # every query is pushed towards "no object"
    assert outputs["pred_logits"].grad[..., -1].lt(0).all()


def test_no_object_class_is_down_weighted():
    target = random_targets([1], 2)[0]
    outputs = random_outputs(1, 8, 2)
    low = SetCriterion(2, eos_coef=0.05)(outputs, [target])["loss_ce"]
    high = SetCriterion(2, eos_coef=1.0)(outputs, [target])["loss_ce"]
    assert not torch.isclose(low, high)


def test_class_term_is_the_weighted_mean_and_counts_can_come_from_all_ranks():
    criterion = SetCriterion(4, eos_coef=0.1)
    outputs, targets = random_outputs(2, 6, 4), random_targets([2, 3], 4)
    losses = criterion(outputs, targets)
    # Hand-made: the matched queries target their labels, all others "no object" (class 4).
    matches = criterion.matcher(outputs, targets)
    classes = torch.full((2, 6), 4)
    for b, (queries, objects) in enumerate(matches):
        classes[b, queries] = targets[b]["labels"][objects]
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1])
    expected = torch.nn.functional.cross_entropy(outputs["pred_logits"].transpose(1, 2), classes, weight=weight)
    torch.testing.assert_close(losses["loss_ce"], expected)
    # Data-parallel training divides by the counts over all ranks / world size: doubled counts halve the terms.
    doubled = criterion(outputs, targets, reduce_counts=lambda counts: 2 * counts)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(doubled[name], losses[name] / 2)
    same = criterion(outputs, targets, reduce_counts=lambda counts: counts)
    torch.testing.assert_close(same["loss"], losses["loss"])


def test_criterion_rejects_bad_labels_and_widths():
    with pytest.raises(ValueError, match="outside"):
        SetCriterion(3)(random_outputs(1, 4, 3), [{"labels": torch.tensor([3]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(5)(random_outputs(1, 4, 3), random_targets([1], 3))


def test_targets_from_samples_normalises():
    targets = targets_from_samples([torch.tensor([[0.0, 0.0, 32.0, 16.0]])], [torch.tensor([2])], [(32, 64)])
    assert torch.allclose(targets[0]["boxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5]]))
    assert targets[0]["labels"].dtype == torch.int64
    assert generalized_box_iou(cxcywh_to_xyxy(targets[0]["boxes"]), cxcywh_to_xyxy(targets[0]["boxes"])).item() == 1
