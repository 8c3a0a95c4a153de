"""COCO detection reader and writer: round trip on generated scenes, category mapping, every bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from visattn.data.coco import CocoDataError, CocoDetectionDataset, read_coco, write_coco
from visattn.data.scenes import SceneConfig, SceneDataset

NAMES = ["cat", "dog", "bird"]
IDS = [3, 17, 40]  # non-contiguous on purpose


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    data = SceneDataset(SceneConfig(kind="multi", image_size=32, small_scale=(0.3, 0.35),
                                    large_scale=(0.45, 0.5), clutter=0, num_objects=(1, 3)),
                        num_samples=4, seed=3)
    samples = []
    for i in range(len(data)):
        sample = data[i]
        samples.append({"image": sample["image"], "image_id": sample["image_id"] + 1,
                        "boxes": sample["boxes"], "labels": sample["labels"] % 3})
    samples[1]["crowd_boxes"] = torch.tensor([[1.0, 1.0, 9.0, 9.0]])
    samples[1]["crowd_labels"] = torch.tensor([2])
    samples.append({"image": torch.rand(3, 32, 32), "image_id": 99,  # an image without objects
                    "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    return samples


@pytest.fixture()
def written(tmp_path, scenes) -> Path:
    return write_coco(scenes, tmp_path / "coco", NAMES, category_ids=IDS)


def edit(path: Path, change) -> Path:
    """Apply ``change`` to the JSON at ``path`` in place and return the path."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_round_trip_keeps_boxes_labels_and_crowds(written, scenes):
    coco = read_coco(written)
    assert coco.class_names == NAMES and coco.category_ids == IDS
    by_id = {s["image_id"]: s for s in coco.samples}
    assert sorted(by_id) == sorted(s["image_id"] for s in scenes)
    for original in scenes:
        got = by_id[original["image_id"]]
        assert torch.allclose(got["boxes"], original["boxes"].float(), atol=1e-3)
        assert torch.equal(got["labels"], original["labels"])
        assert (got["height"], got["width"]) == (32, 32)
    assert by_id[scenes[1]["image_id"]]["crowd_labels"].tolist() == [2]
    assert len(by_id[99]["labels"]) == 0  # images without objects are valid, with empty targets
    report = coco.report
    assert report.num_images == 5 and report.num_crowd == 1 and report.num_empty_images == 1
    assert not report.skipped


def test_json_holds_the_original_category_ids(written):
    data = json.loads(written.read_text())
    assert {a["category_id"] for a in data["annotations"]} <= set(IDS)
    assert [c["id"] for c in data["categories"]] == IDS
    assert all(a["id"] >= 1 for a in data["annotations"])


def test_dataset_loads_image_tensors(written, scenes):
    dataset = CocoDetectionDataset(written)
    assert len(dataset) == 5 and dataset.class_names == NAMES and dataset.category_ids == IDS
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    original = next(s for s in scenes if s["image_id"] == sample["image_id"])
    assert torch.allclose(sample["image"], original["image"], atol=1 / 255 + 1e-6)  # PNG is lossless at 8 bits


def test_categories_are_sorted_by_id(tmp_path, scenes):
    path = write_coco(scenes[:1], tmp_path, ["z", "y", "x"], category_ids=[50, 2, 9])
    coco = read_coco(path)
    assert coco.category_ids == [2, 9, 50] and coco.class_names == ["y", "x", "z"]
    # label 0 was written as id 50 ("z"), which is now contiguous label 2
    assert torch.equal(coco.samples[0]["labels"], torch.tensor([[2, 0, 1][v] for v in scenes[0]["labels"]]))


def test_broken_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [')
    with pytest.raises(CocoDataError, match="bad.json: invalid JSON at line 1, column 13"):
        read_coco(path)
    path.write_text('{"images": []}')
    with pytest.raises(CocoDataError, match="annotations"):
        read_coco(path)
    with pytest.raises(CocoDataError, match="not found"):
        read_coco(tmp_path / "absent.json")


@pytest.mark.parametrize("bbox, reason", [
    ([20.0, 20.0, 30.0, 5.0], "outside the image"),
    ([2.0, 2.0, 0.0, 5.0], "non-positive width or height"),
    ([2.0, 2.0, 5.0, -1.0], "non-positive width or height"),
])
def test_invalid_boxes_are_skipped_and_reported_or_raise_when_strict(written, bbox, reason, caplog):
    def corrupt(data):
        data["annotations"][0]["bbox"] = bbox
        data["annotations"][0]["id"] = 555

    edit(written, corrupt)
    with caplog.at_level(logging.WARNING, logger="visattn.data.coco"):
        coco = read_coco(written)
    assert coco.report.skipped == {f"invalid box: {reason}": 1}
    assert "annotation 555" in coco.report.summary() and "annotation 555" in caplog.text
    with pytest.raises(CocoDataError, match=f"instances.json.*annotation 555.*{reason}"):
        read_coco(written, strict=True)


def test_unknown_category_and_image_ids(written):
    def corrupt(data):
        data["annotations"][0]["category_id"] = 1000
        data["annotations"][1]["image_id"] = 4242

    edit(written, corrupt)
    coco = read_coco(written)
    assert coco.report.skipped == {"unknown category_id 1000": 1, "unknown image_id 4242": 1}
    kept = sum(len(s["labels"]) + len(s["crowd_labels"]) for s in coco.samples)
    assert kept == len(json.loads(written.read_text())["annotations"]) - 2
    ann_id = json.loads(written.read_text())["annotations"][0]["id"]
    with pytest.raises(CocoDataError, match=f"annotation {ann_id}: unknown category_id 1000"):
        read_coco(written, strict=True)


def test_missing_image_files(written):
    (written.parent / "images" / f"{99:08d}.png").unlink()
    coco = read_coco(written)
    assert coco.report.skipped == {"missing image file": 1} and coco.report.num_images == 4
    with pytest.raises(CocoDataError, match="image 99 .*missing image file"):
        read_coco(written, strict=True)
    assert read_coco(written, check_images=False).report.num_images == 5


def test_malformed_records_always_raise(written):
    edit(written, lambda d: d["annotations"][0].pop("bbox"))
    with pytest.raises(CocoDataError, match="annotation .* missing field 'bbox'"):
        read_coco(written)
    edit(written, lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))
    with pytest.raises(CocoDataError, match="four numbers"):
        read_coco(written)
    edit(written, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(CocoDataError, match="duplicate image id"):
        read_coco(written)


def test_image_size_mismatch_is_an_error(written):
    edit(written, lambda d: d["images"][0].update(width=50))
    dataset = CocoDetectionDataset(written, strict=False)
    index = next(i for i, s in enumerate(dataset.coco.samples) if s["width"] == 50)
    with pytest.raises(CocoDataError, match="32x32 but the JSON says 50x32"):
        dataset[index]


def test_writer_rejects_bad_ids(tmp_path, scenes):
    with pytest.raises(ValueError, match="distinct"):
        write_coco(scenes, tmp_path, NAMES, category_ids=[1, 1, 2])


def test_corrupt_image_file_names_the_json_and_the_image(written):
    (written.parent / "images" / f"{99:08d}.png").write_bytes(b"\x89PNG not really")
    dataset = CocoDetectionDataset(written)
    index = next(i for i, s in enumerate(dataset.coco.samples) if s["image_id"] == 99)
    with pytest.raises(CocoDataError, match="instances.json: image 99: .*00000099.png"):
        dataset[index]
