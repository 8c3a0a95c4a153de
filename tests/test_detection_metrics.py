"""COCO mAP through pycocotools and attention localisation of detections."""

from __future__ import annotations

import pytest
import torch

from visattn.metrics.detection import attention_localization, coco_map

pytest.importorskip("pycocotools")

NAMES = ["a", "b"]


def ground_truth() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0], [30.0, 30.0, 60.0, 50.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[10.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def as_predictions(targets, shift: float = 0.0) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"] + shift, "labels": t["labels"].clone(),
             "scores": torch.linspace(0.9, 0.8, len(t["labels"]))} for t in targets]


def test_perfect_predictions_score_one(capsys):
    result = coco_map(as_predictions(ground_truth()), ground_truth(), NAMES)
    assert result["map"] == pytest.approx(1.0) and result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == pytest.approx(1.0)
    assert result["ap/a"] == pytest.approx(1.0) and result["ap/b"] == pytest.approx(1.0)
    assert result["map_large"] == -1.0  # no object above 96^2 pixels: undefined, as in COCO
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured


def test_shifted_boxes_score_lower_and_wrong_labels_score_zero():
    perfect = coco_map(as_predictions(ground_truth()), ground_truth(), NAMES)["map"]
    shifted = coco_map(as_predictions(ground_truth(), shift=3.0), ground_truth(), NAMES)
    assert shifted["map"] < perfect and shifted["map_50"] == pytest.approx(1.0)
    further = coco_map(as_predictions(ground_truth(), shift=6.0), ground_truth(), NAMES)["map"]
    assert further < shifted["map"]
    swapped = as_predictions(ground_truth())
    for p in swapped:
        p["labels"] = 1 - p["labels"]
    assert coco_map(swapped, ground_truth(), NAMES)["map"] == pytest.approx(0.0)


def test_false_positive_with_a_higher_score_lowers_ap():
    predictions = as_predictions(ground_truth())
    predictions[2] = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
                      "scores": torch.tensor([0.99])}
    result = coco_map(predictions, ground_truth(), NAMES)
    assert result["ap/a"] == pytest.approx(1.0) and result["ap/b"] < 1.0


def test_crowd_regions_neither_reward_nor_punish():
    targets = ground_truth()
    targets[2]["crowd_boxes"] = torch.tensor([[0.0, 0.0, 30.0, 30.0]])
    targets[2]["crowd_labels"] = torch.tensor([1])
    predictions = as_predictions(ground_truth())
    predictions[2] = {"boxes": torch.tensor([[1.0, 1.0, 29.0, 29.0]]), "labels": torch.tensor([1]),
                      "scores": torch.tensor([0.99])}
    assert coco_map(predictions, targets, NAMES)["map"] == pytest.approx(1.0)


def test_empty_predictions_and_non_contiguous_ids():
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
             for _ in range(3)]
    assert coco_map(empty, ground_truth(), NAMES)["map"] == pytest.approx(0.0)
    result = coco_map(as_predictions(ground_truth()), ground_truth(), NAMES, category_ids=[7, 90])
    assert result["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="predictions for"):
        coco_map(empty[:2], ground_truth(), NAMES)
    with pytest.raises(ValueError, match="label 5"):
        bad = as_predictions(ground_truth())
        bad[0]["labels"] = torch.tensor([5, 0])
        coco_map(bad, ground_truth(), NAMES)


def localise(attention, box, size=(32, 32)):
    pred = {"boxes": torch.tensor([box]), "labels": torch.tensor([0]), "scores": torch.tensor([1.0]),
            "attention": attention}
    target = {"boxes": torch.tensor([box]), "labels": torch.tensor([0])}
    return attention_localization([pred], [target], [size])


def test_energy_of_a_peaked_and_a_uniform_map():
    peaked = torch.zeros(1, 4, 4)
    peaked[0, 1, 2] = 1.0  # grid cell (row 1, col 2) covers pixels y 8..16, x 16..24 of a 32 x 32 image
    result = localise(peaked, [16.0, 8.0, 24.0, 16.0])
    assert result["baseline_pred_box"] == pytest.approx(1 / 16) and result["energy_in_pred_box"] > 0.5
    assert result["energy_in_gt_box"] == result["energy_in_pred_box"] and result["num_matched"] == 1
    assert localise(peaked, [0.0, 24.0, 8.0, 32.0])["energy_in_pred_box"] == pytest.approx(0.0, abs=1e-6)
    result = localise(torch.full((1, 4, 4), 1 / 16), [3.0, 5.0, 19.0, 29.0])
    assert result["energy_in_pred_box"] == pytest.approx(result["baseline_pred_box"], abs=1e-6)


def test_attention_localization_uses_matched_ground_truth():
    targets = ground_truth()[:2]
    predictions = as_predictions(targets, shift=1.0)
    for p in predictions:
        p["attention"] = torch.full((len(p["labels"]), 8, 8), 1 / 64)
    predictions[0]["attention"][1] = 0.0
    predictions[0]["attention"][1, 5, 5] = 1.0  # inside gt box 1 of image 0 (pixels 40..48)
    result = attention_localization(predictions, targets, [(64, 64), (64, 64)])
    assert result["num_detections"] == 3 and result["num_matched"] == 3
    assert result["energy_in_gt_box"] > result["baseline_gt_box"]
    result = attention_localization(predictions, targets, [(64, 64)] * 2, iou_threshold=0.99)
    assert result["num_matched"] == 0 and result["energy_in_gt_box"] == 0.0
