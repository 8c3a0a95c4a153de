"""The detection task end to end: data, collate, a tiny training run, evaluation, detect on files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from visattn import Predictor
from visattn.cli import main
from visattn.data.coco import write_coco
from visattn.engine import TrainConfig
from visattn.heads.detector import Detector
from visattn.models import load
from visattn.tasks.detect import (
    ResizeImage,
    coco_data,
    collate,
    evaluate_detector,
    format_detection,
    scene_data,
    train_detector,
)

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def tiny_scenes():
    return scene_data(num_train=16, num_val=8, image_size=32, num_objects=(1, 3))


def test_collate_normalises_targets_by_the_original_size():
    resize = ResizeImage(16)
    samples = [resize({"image": torch.rand(3, 40, 80), "boxes": torch.tensor([[0.0, 0.0, 40.0, 20.0]]),
                       "labels": torch.tensor([1]), "image_id": 7}),
               resize({"image": torch.rand(3, 16, 16), "boxes": torch.zeros(0, 4),
                       "labels": torch.zeros(0, dtype=torch.int64), "image_id": 8})]
    batch = collate(samples)
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["image_sizes"] == [(40, 80), (16, 16)]
    assert torch.allclose(batch["targets"][0]["boxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5]]))
    assert batch["targets"][1]["boxes"].shape == (0, 4) and batch["crowd_boxes"][0].shape == (0, 4)
    assert batch["boxes"][0].tolist() == [[0.0, 0.0, 40.0, 20.0]]  # evaluation stays in original pixels


@pytest.mark.slow
def test_train_evaluate_load_and_detect_files(tiny_scenes, tmp_path, tiny_config):
    torch.manual_seed(0)
    result = train_detector(tiny_config("detector"), tiny_scenes,
                            TrainConfig(epochs=2, batch_size=8, progress=False, device="cpu"), tmp_path / "run")
    assert result["stopped"] == "completed" and result["best"]["metric"] == "map"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for key in ("train_loss", "train_loss_ce_0", "val_map", "val_map_50", "val_ap/circle"):
        assert key in records[-1]
    assert 0.0 <= records[-1]["val_map"] <= 1.0

    model = load(tmp_path / "run" / "best.safetensors", task="detect")
    assert isinstance(model, Detector) and model.config.image_size == 32
    assert model.config.class_names == tiny_scenes.class_names and model.config.num_classes == 16

    image_path = tmp_path / "scene.png"
    picture = tiny_scenes.val[0]["image"]
    Image.fromarray((picture.permute(1, 2, 0) * 255).byte().numpy()).resize((48, 40)).save(image_path)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.safetensors", device="cpu", task="detect")
    detections = predictor.predict([image_path], score_threshold=0.0, top_k=3)
    assert len(detections) == 1 and len(detections[0].labels) == 3
    assert detections[0].attention.shape == (3, 8, 8) and detections[0].image_size == (40, 48)
    assert (detections[0].boxes[:, 2] <= 48 + 1e-3).all() and (detections[0].boxes[:, 3] <= 40 + 1e-3).all()
    text = format_detection(detections[0])
    assert "scene.png" in text and len(text.splitlines()) == 4
    assert main(["detect", str(image_path), "--checkpoint", str(tmp_path / "run" / "best.safetensors"),
                 "--score-threshold", "0", "--top-k", "3", "--out", str(tmp_path / "figures"), "--device", "cpu"]) == 0
    figures = list((tmp_path / "figures").glob("*_detections.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 0


def test_coco_files_feed_the_same_pipeline(tiny_scenes, tmp_path, tiny_detector):
    samples = [tiny_scenes.val[i] for i in range(4)]
    ids = [2 * i + 5 for i in range(16)]  # non-contiguous category ids
    train_file = write_coco(samples[:2], tmp_path / "train", tiny_scenes.class_names, category_ids=ids)
    val_file = write_coco(samples[2:], tmp_path / "val", tiny_scenes.class_names, category_ids=ids)
    data = coco_data(train_file, val_file, image_size=24)
    assert data.category_ids == ids and data.class_names == tiny_scenes.class_names
    batch = collate([data.val[0], data.val[1]])
    assert batch["images"].shape == (2, 3, 24, 24) and batch["image_sizes"] == [(32, 32), (32, 32)]
    assert torch.allclose(batch["boxes"][0], samples[2]["boxes"], atol=1e-3)
    model = tiny_detector(num_classes=16, class_names=data.class_names)
    loader = torch.utils.data.DataLoader(data.val, batch_size=2, collate_fn=collate)
    metrics = evaluate_detector(model, loader, torch.device("cpu"), category_ids=data.category_ids)
    assert {"map", "map_50", "energy_in_pred_box", "num_detections"} <= set(metrics)

    other = write_coco(samples[:1], tmp_path / "other", tiny_scenes.class_names[::-1], category_ids=ids)
    with pytest.raises(ValueError, match="categories"):
        coco_data(train_file, other)
