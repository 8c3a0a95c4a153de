"""The DETR-style detector head on the registered tiny_detector: shapes, attention maps, gradients,
post-processing, save/load."""

from __future__ import annotations

import pytest
import torch

from visattn.boxes import denormalize_boxes
from visattn.heads.detection_loss import SetCriterion
from visattn.heads.detector import Detector, DetectorConfig, sine_embedding
from visattn.models import build_model


def targets() -> list[dict[str, torch.Tensor]]:
    return [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]


@pytest.mark.parametrize("reference_points", [True, False])
def test_output_shapes_and_attention_rows_sum_to_one(reference_points, tiny_detector):
    model = tiny_detector(reference_points=reference_points)
    out = model(torch.rand(2, 3, 24, 32))  # grid 6 x 8 after two halvings
    assert out["pred_logits"].shape == (2, 6, 4)
    assert out["pred_boxes"].shape == (2, 6, 4)
    assert out["attention"].shape == (2, 6, 6, 8)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert torch.allclose(out["attention"].sum(dim=(-1, -2)), torch.ones(2, 6), atol=1e-5)
    assert (out["attention"] >= 0).all()
    assert len(out["aux_outputs"]) == 1
    assert out["aux_outputs"][0]["pred_logits"].shape == (2, 6, 4)
    assert "aux_outputs" not in tiny_detector(aux_loss=False)(torch.rand(1, 3, 16, 16))


def test_anchors_start_on_a_grid(tiny_detector):
    model = tiny_detector(num_queries=4)
    boxes = model(torch.rand(1, 3, 16, 16))["pred_boxes"][0]  # (4, 4): 2 x 2 anchors of half the image
    expected = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5],
                             [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    assert torch.allclose(boxes, expected, atol=0.02)


@pytest.mark.parametrize("reference_points, position_in_values", [(True, True), (True, False), (False, False)])
def test_loss_is_finite_and_every_parameter_gets_a_gradient(reference_points, position_in_values, tiny_detector):
    model = tiny_detector(reference_points=reference_points, position_in_values=position_in_values)
    losses = SetCriterion(3)(model(torch.rand(2, 3, 16, 16)), targets())
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(losses)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_batched_forward_equals_single_images(tiny_detector):
    model = tiny_detector().eval()
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        batched = model(images)
        for b in range(3):
            single = model(images[b:b + 1])
            for key in ("pred_logits", "pred_boxes", "attention"):
                assert torch.allclose(batched[key][b], single[key][0], atol=1e-5), key


def test_postprocess_threshold_top_k_and_pixel_boxes(tiny_detector):
    model = tiny_detector().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 16, 16))
    out["pred_logits"] = torch.randn(2, 6, 4) * 3
    sizes = [(40, 80), (16, 16)]
    everything = model.postprocess(out, sizes, score_threshold=0.0, top_k=100)
    assert [len(d["scores"]) for d in everything] == [6, 6]
    first = everything[0]
    assert (first["scores"][:-1] >= first["scores"][1:]).all()
    expected = denormalize_boxes(out["pred_boxes"][0, first["query_index"]], sizes[0])
    expected = torch.minimum(expected.clamp_min(0), torch.tensor([80.0, 40.0, 80.0, 40.0]))
    assert torch.allclose(first["boxes"], expected)
    assert first["attention"].shape == (6, 4, 4)
    prob = out["pred_logits"].softmax(-1)[..., :-1]
    assert torch.allclose(first["scores"], prob[0, first["query_index"]].max(-1).values)
    kept = model.postprocess(out, sizes, score_threshold=0.5, top_k=2)
    for d, b in zip(kept, range(2)):
        assert len(d["scores"]) == min(2, int((prob[b].max(-1).values >= 0.5).sum()))
        assert (d["scores"] >= 0.5).all()
    with pytest.raises(ValueError, match="image sizes"):
        model.postprocess(out, [(16, 16)])
    out["pred_boxes"][:] = torch.tensor([0.9, 0.1, 0.5, 0.5])  # reaches past the right and top edges
    clipped = model.postprocess(out, sizes, score_threshold=0.0)[0]["boxes"]
    assert torch.allclose(clipped, torch.tensor([52.0, 0.0, 80.0, 14.0]).expand(6, 4))


def test_config_validation_and_default_names():
    assert DetectorConfig(num_classes=2).class_names == ["0", "1"]
    with pytest.raises(ValueError, match="class_names"):
        DetectorConfig(num_classes=2, class_names=["x"])
    with pytest.raises(ValueError, match="divisible"):
        DetectorConfig(hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="num_queries"):
        DetectorConfig(num_queries=0)


def test_sine_embedding_distinguishes_points():
    points = torch.tensor([[0.1, 0.2], [0.1, 0.2], [0.9, 0.2]])
    enc = sine_embedding(points, 32)
    assert enc.shape == (3, 32)
    assert torch.equal(enc[0], enc[1]) and not torch.allclose(enc[0], enc[2])
    assert torch.allclose(enc[0, :16], enc[2, :16])  # same y -> same y half


def test_registry_build_and_save_load_round_trip(tmp_path, tiny_config):
    from visattn.checkpoint import save_checkpoint
    from visattn.config import config_to_dict
    from visattn.models import load

    torch.manual_seed(0)
    model = build_model("detector", config_to_dict(tiny_config("detector")))
    assert isinstance(model, Detector) and model.config.class_names == ["a", "b", "c"]
    path = save_checkpoint(tmp_path / "det.safetensors", model, task="detect", model_name="detector",
                           config=config_to_dict(model.config))
    loaded = load(path)
    images = torch.rand(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["attention"], b["attention"])
    assert loaded.config == model.config
