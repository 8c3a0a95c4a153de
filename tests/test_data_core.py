"""The shared data-format core: one error family, one skip report and policy, atomic writes, image conversion."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.checkpoint import CheckpointError
from visattn.data.coco import CocoDataError
from visattn.data.core import DataError, SkipReport, get_field, iter_samples, load_json, write_atomic, write_json_atomic
from visattn.data.feature_cache import FeatureCacheError
from visattn.data.images import ImageLoadError, image_to_tensor, load_image, save_image, tensor_to_image
from visattn.data.karpathy import CaptionDataError, export_karpathy, read_karpathy
from visattn.metrics.localisation import upsample_maps
from visattn.viz import upsample_attention


# ---------------------------------------------------------------------------------------------- errors
def test_data_error_names_file_record_and_field_in_one_line():
    error = DataError("data/x.json", "record 12", "boxes", "lies outside the image")
    assert str(error) == "data/x.json: record 12: field 'boxes' lies outside the image"
    assert (error.path, error.record, error.field, error.reason) == ("data/x.json", "record 12", "boxes",
                                                                      "lies outside the image")
    assert str(DataError("x.json", "images[3]", reason="duplicate image id 7")) == "x.json: images[3]: duplicate image id 7"
    assert str(DataError("x.json", reason="invalid JSON")) == "x.json: invalid JSON"
    composed = DataError("x.json: already a message")
    assert str(composed) == "x.json: already a message" and composed.path is None
    assert "\n" not in str(error) and isinstance(error, ValueError)


@pytest.mark.parametrize("cls", [CocoDataError, CaptionDataError, ImageLoadError, FeatureCacheError, CheckpointError])
def test_every_format_error_is_one_family(cls):
    error = cls("some/file", reason="broken")
    assert isinstance(error, DataError) and isinstance(error, ValueError)
    assert str(error) == "some/file: broken" and error.path == "some/file" and error.reason == "broken"


def test_image_load_error_survives_pickling_as_in_dataloader_workers():
    error = ImageLoadError("a/b.png", "truncated")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ImageLoadError and str(back) == "a/b.png: truncated"


# ---------------------------------------------------------------------------------------------- JSON
def test_load_json_errors_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "f.json"
    with pytest.raises(CocoDataError, match="f.json: annotation file not found"):
        load_json(path, what="annotation file", error=CocoDataError)
    path.write_bytes(b'{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"f\.json: invalid JSON at line 2, column 7"):
        load_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"not valid UTF-8 at byte 7 \(line 1, column 8\)"):
        load_json(path)
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert load_json(path) == {"a": 1}


def test_get_field_checks_presence_and_type_and_refuses_bools():
    entry = {"id": 3, "flag": True, "name": "x"}
    assert get_field(entry, "id", int, path="f.json", record="images[0]") == 3
    with pytest.raises(DataError, match=r"f\.json: images\[0\]: missing field 'size' \(fields present"):
        get_field(entry, "size", int, path="f.json", record="images[0]")
    with pytest.raises(DataError, match=r"images\[0\]: field 'flag' must be int, got bool"):
        get_field(entry, "flag", int, path="f.json", record="images[0]")
    with pytest.raises(CaptionDataError, match=r"images\[1\]: must be an object, got list"):
        get_field([1], "id", int, path="f.json", record="images[1]", error=CaptionDataError)


# ---------------------------------------------------------------------------------------------- skip report
def test_skip_report_counts_skips_and_summarises_in_one_line(caplog):
    report = SkipReport("f.json", {"images": 0, "captions": 0})
    report.keep("images", 2)
    report.keep("captions", 5)
    for k in range(7):
        report.reject("missing image file", f"images[{k}]", f"image file not found: {k}.jpg")
    report.skip("empty sentence dropped", "images[0]: sentences[1]")
    assert report.skipped == {"missing image file": 7, "empty sentence dropped": 1} and report.num_skipped == 8
    assert len(report.examples["missing image file"]) == 5  # a few examples, not every record
    assert (report.num_images, report.num_captions) == (2, 5)
    summary = report.summary()
    assert summary.startswith("f.json: 2 images, 5 captions; 1 empty sentence dropped (e.g. images[0]: sentences[1])")
    assert "7 missing image file (e.g. images[0]: image file not found: 0.jpg" in summary and "\n" not in summary
    with caplog.at_level(logging.INFO, logger="test.core"):
        report.log(logging.getLogger("test.core"))
        SkipReport("g.json", {"images": 1}).log(logging.getLogger("test.core"))
    levels = [(r.levelno, r.message.split(":")[0]) for r in caplog.records]
    assert levels == [(logging.WARNING, "f.json"), (logging.INFO, "g.json")]


def test_strict_policy_raises_the_readers_error_naming_the_record():
    report = SkipReport("f.json", strict=True, error=CocoDataError)
    with pytest.raises(CocoDataError, match=r"f\.json: annotation 5: invalid box: outside the image \(strict"):
        report.reject("invalid box: outside the image", "annotation 5")
    found = ImageLoadError("a.png", "truncated")
    with pytest.raises(ImageLoadError) as info:
        report.reject("unreadable files skipped", "a.png", error=found)
    assert info.value is found
    report.skip("empty sentence dropped", "x")  # allowed by the format: counted even when strict
    assert report.skipped == {"empty sentence dropped": 1}


# ---------------------------------------------------------------------------------------------- atomic writes
def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic({"a": "é"}, target, indent=1)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}
    assert "é" in target.read_text(encoding="utf-8")  # UTF-8, not \\u escapes

    def half_then_fail(tmp):
        tmp.write_text('{"a": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}  # the old content survives
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_write_atomic_syncs_the_data_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_atomic(tmp_path / "x.bin", lambda tmp: tmp.write_bytes(b"data"))
    assert events[:2] == ["fsync", "replace"] and (tmp_path / "x.bin").read_bytes() == b"data"


def test_written_files_get_normal_permissions(tmp_path):
    path = write_atomic(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    assert path.stat().st_mode == reference.stat().st_mode  # not mkstemp's 0600


# ---------------------------------------------------------------------------------------------- images
def test_tensor_to_image_inverts_image_to_tensor():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = image_to_tensor(Image.fromarray(pixels))  # (3, 5, 7) in [0, 1]
    for image in (tensor, (tensor * 255).round().to(torch.uint8), pixels, tensor.permute(1, 2, 0).numpy(),
                  Image.fromarray(pixels)):
        picture = tensor_to_image(image)
        assert picture.mode == "RGB" and picture.size == (7, 5)
        assert np.array_equal(np.asarray(picture), pixels)


def test_tensor_to_image_refuses_what_is_not_pixels():
    with pytest.raises(ValueError, match=r"sample 3: float image values must be in \[0, 1\]"):
        tensor_to_image(torch.full((3, 2, 2), 1.5), source="sample 3")
    assert np.asarray(tensor_to_image(torch.full((3, 2, 2), 1.5), clip=True)).max() == 255
    with pytest.raises(ValueError, match=r"must be \(3, H, W\), got \(1, 2, 2\)"):
        tensor_to_image(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="got list"):
        tensor_to_image([[0.0]])


def test_save_image_is_lossless_and_atomic(tmp_path):
    tensor = image_to_tensor(Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 4, 3), dtype=np.uint8)))
    path = save_image(tensor, tmp_path / "imgs" / "a.png")
    assert torch.equal(image_to_tensor(load_image(path)), tensor)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]
    with pytest.raises(ValueError, match="unknown image file suffix '.xyz'"):
        save_image(tensor, tmp_path / "a.xyz")


def test_iter_samples_reads_map_style_data_sets_and_iterables():
    class MapStyle(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return {"i": index}

    assert [s["i"] for s in iter_samples(MapStyle())] == [0, 1, 2]
    assert [s["i"] for s in iter_samples({"i": i} for i in range(2))] == [0, 1]


# ---------------------------------------------------------------------------------------------- writers, maps
def test_export_karpathy_round_trips_images_ids_and_captions(tmp_path):
    splits = {"train": [{"image": torch.rand(3, 8, 8), "image_id": 4, "captions": ["a red circle"]},
                        {"image": torch.rand(3, 8, 8), "image_id": 9, "captions": ["two squares", "a square"]}],
              "val": [{"image": torch.rand(3, 8, 8), "image_id": 4, "captions": ["a cat"]}]}
    path = export_karpathy(splits, tmp_path / "out")
    back, report = read_karpathy(path, tmp_path / "out")
    assert [r.image_id for r in back["train"]] == [0, 1] and [r.image_id for r in back["val"]] == [2]
    assert back["train"][1].captions == ["two squares", "a square"] and report.num_images == 3
    image = image_to_tensor(load_image(back["val"][0].path))
    assert torch.allclose(image, splits["val"][0]["image"], atol=0.5 / 255 + 1e-6)


def test_figures_and_metrics_share_one_upsampling():
    maps = torch.rand(3, 4, 5)
    assert np.allclose(upsample_attention(maps, (16, 20), normalize=True), upsample_maps(maps, (16, 20)).numpy())
    raw = upsample_maps(maps, (16, 20), normalize=False)
    assert torch.allclose(raw / raw.sum(dim=(-2, -1), keepdim=True), upsample_maps(maps, (16, 20)), atol=1e-6)
    assert torch.equal(upsample_maps(torch.zeros(1, 2, 2), (4, 4)), torch.zeros(1, 4, 4))  # zero stays zero
