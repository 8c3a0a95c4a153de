"""Karpathy split JSON and COCO caption files: round trips, the restval rule, and every bad-input case."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from visattn.data.coco_captions import read_coco_captions, write_coco_captions
from visattn.data.karpathy import CaptionDataError, CaptionRecord, read_karpathy, write_karpathy


def _touch(root: Path, relative: str) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake image bytes")  # the readers check that the file exists, not its pixels
    return str(path)


def _image(image_id: int, split: str, raws: list[str], *, filepath: str | None = "train2014", **extra) -> dict:
    entry = {"filename": f"img{image_id}.jpg", "imgid": image_id, "split": split,
             "sentences": [{"raw": raw, "tokens": raw.lower().split()} for raw in raws]}
    if filepath is not None:
        entry["filepath"] = filepath
    entry.update(extra)
    return entry


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for i in range(6):
        _touch(images, f"train2014/img{i}.jpg")
    return images


# ---------------------------------------------------------------------------------------------- Karpathy
def test_karpathy_reads_splits_and_restval_goes_to_train(tmp_path, root):
    data = {"images": [
        _image(0, "train", ["A dog.", "A brown dog"]),
        _image(1, "restval", ["A cat"]),
        _image(2, "val", ["Two birds"]),
        _image(3, "test", ["A car"]),
    ]}
    splits, report = read_karpathy(_write(tmp_path / "d.json", data), root)
    assert sorted(splits) == ["test", "train", "val"]
    assert [r.image_id for r in splits["train"]] == [0, 1]
    assert [r.image_id for r in splits["val"]] == [2] and [r.image_id for r in splits["test"]] == [3]
    first = splits["train"][0]
    assert first.path == str(root / "train2014" / "img0.jpg")
    assert first.captions == ["A dog.", "A brown dog"] and first.tokens == [["a", "dog."], ["a", "brown", "dog"]]
    assert (report.num_images, report.num_captions, report.num_skipped) == (4, 5, 0)


def test_karpathy_ids_filepath_and_tokens(tmp_path, root):
    _touch(root, "img7.jpg")
    data = {"images": [
        _image(0, "train", ["x"], cocoid=391895),  # COCO file: cocoid wins over imgid
        {"filename": "img7.jpg", "imgid": 7, "split": "val", "sentences": [{"raw": "A Dog, running."}]},
    ]}
    splits, _ = read_karpathy(_write(tmp_path / "d.json", data), root)
    assert splits["train"][0].image_id == 391895
    flickr = splits["val"][0]  # no filepath (Flickr style), no tokens: computed with tokenize()
    assert flickr.path == str(root / "img7.jpg") and flickr.tokens == [["a", "dog", "running"]]
    splits, _ = read_karpathy(tmp_path / "d.json", root, retokenize=True)
    assert splits["train"][0].tokens == [["x"]]


def test_karpathy_write_read_round_trip(tmp_path, root):
    records = {
        "train": [CaptionRecord(str(root / "train2014/img0.jpg"), 10, ["a red circle", "a circle"],
                                [["a", "red", "circle"], ["a", "circle"]])],
        "restval": [{"path": str(root / "train2014/img1.jpg"), "image_id": 11, "captions": ["a blue seven"]}],
        "test": [{"path": root / "train2014/img2.jpg", "image_id": 12, "captions": ["two squares"]}],
    }
    path = write_karpathy(records, tmp_path / "out" / "dataset.json", image_root=root)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["images"][0]["filepath"] == "train2014" and written["images"][0]["filename"] == "img0.jpg"
    splits, report = read_karpathy(path, root)
    assert [r.image_id for r in splits["train"]] == [10, 11] and splits["test"][0].image_id == 12
    assert splits["train"][0] == records["train"][0]
    assert splits["train"][1].tokens == [["a", "blue", "seven"]]
    assert report.num_images == 3 and not list(tmp_path.glob("out/.*tmp"))  # atomic write left no temp file


def test_karpathy_writer_rejects_bad_records(tmp_path, root):
    good = {"path": str(root / "train2014/img0.jpg"), "image_id": 1, "captions": ["a dog"]}
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        write_karpathy({"dev": [good]}, tmp_path / "x.json", image_root=root)
    with pytest.raises(ValueError, match="duplicate image id"):
        write_karpathy({"train": [good], "val": [good]}, tmp_path / "x.json", image_root=root)
    with pytest.raises(ValueError, match="not under image_root"):
        write_karpathy({"train": [{**good, "path": str(tmp_path / "elsewhere.jpg")}]}, tmp_path / "x.json",
                       image_root=root)
    with pytest.raises(ValueError, match="lacks \\['captions'\\]"):
        write_karpathy({"train": [{"path": good["path"], "image_id": 1}]}, tmp_path / "x.json", image_root=root)
    with pytest.raises(ValueError, match="must be a list of str"):
        write_karpathy({"train": [{**good, "captions": "a dog"}]}, tmp_path / "x.json", image_root=root)
    assert not (tmp_path / "x.json").exists()


def test_karpathy_empty_sentences_are_dropped_and_counted(tmp_path, root, caplog):
    data = {"images": [
        _image(0, "train", ["A dog", "   ", "..."]),  # two empty sentences dropped, image kept
        _image(1, "train", ["", " "]),  # every sentence empty: image skipped
        _image(2, "val", ["A cat"]),
    ]}
    data["images"][0]["sentences"][2]["tokens"] = []
    with caplog.at_level(logging.INFO, logger="visattn.data.karpathy"):
        splits, report = read_karpathy(_write(tmp_path / "d.json", data), root)
    assert [r.image_id for r in splits["train"]] == [0] and splits["train"][0].captions == ["A dog"]
    assert report.skipped == {"empty sentence dropped": 4, "image without captions skipped": 1}
    assert report.examples["image without captions skipped"] == ["images[1] (id 1)"]
    assert "images[0] (id 0): sentences[1]" in report.examples["empty sentence dropped"]
    assert (report.num_images, report.num_captions) == (2, 2)
    assert any(r.levelno == logging.WARNING and "1 image without captions skipped" in r.message
               for r in caplog.records)


def test_karpathy_missing_image_error_or_counted_skip(tmp_path, root):
    data = {"images": [_image(0, "train", ["A dog"]), _image(99, "train", ["A cat"])]}
    path = _write(tmp_path / "d.json", data)
    with pytest.raises(CaptionDataError, match=r"d\.json: images\[1\] \(id 99\): image file not found: .*img99\.jpg"):
        read_karpathy(path, root, strict=True)
    splits, report = read_karpathy(path, root)
    assert [r.image_id for r in splits["train"]] == [0]
    assert report.skipped == {"missing image file skipped": 1}
    assert "img99.jpg" in report.summary()


def _set(entry: dict, dotted: str, value) -> None:
    keys = [int(key) if key.isdigit() else key for key in dotted.split(".")]
    for key in keys[:-1]:
        entry = entry[key]
    if value is KeyError:
        del entry[keys[-1]]
    else:
        entry[keys[-1]] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("filename", KeyError, r"images\[1\] \(id 1\): missing field 'filename'"),
        ("split", KeyError, r"images\[1\] \(id 1\): missing field 'split'"),
        ("sentences", KeyError, r"missing field 'sentences'"),
        ("imgid", KeyError, r"images\[1\]: missing field 'imgid'"),
        ("sentences.0.raw", KeyError, r"images\[1\] \(id 1\): sentences\[0\]: missing field 'raw'"),
        ("imgid", "1", r"images\[1\]: field 'imgid' must be int, got str"),
        ("imgid", True, r"field 'imgid' must be int, got bool"),
        ("filename", 5, r"field 'filename' must be str, got int"),
        ("filename", " ", r"field 'filename' is empty"),
        ("filepath", None, r"field 'filepath' must be str, got NoneType"),
        ("sentences", {"raw": "a"}, r"field 'sentences' must be list, got dict"),
        ("sentences.0", "a dog", r"sentences\[0\]: must be an object with 'raw', got str"),
        ("sentences.0.raw", 3, r"sentences\[0\]: field 'raw' must be str, got int"),
        ("sentences.0.raw", None, r"field 'raw' must be str, got NoneType"),
        ("sentences.0.tokens", [1, 2], r"sentences\[0\]: field 'tokens' must be a list of str"),
        ("sentences.0.tokens", "a dog", r"field 'tokens' must be a list of str"),
        ("split", "dev", r"field 'split' is 'dev'; valid: \['restval', 'test', 'train', 'val'\]"),
        ("imgid", 0, 
         r"images\[1\] \(id 0\): duplicate image id 0, first used by images\[0\]"),
    ],
)
def test_karpathy_bad_records_name_file_record_and_field(tmp_path, root, field, value, message):
    data = {"images": [_image(0, "train", ["A dog"]), _image(1, "train", ["A cat"])]}
    _set(data["images"][1], field, value)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(CaptionDataError, match=rf"bad\.json: .*{message}"):
        read_karpathy(path, root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"images": [\n  {"filename": "a.jpg",, }]}', r"invalid JSON at line 2, column 24"),
        (b'{"images": [{"filename": "caf\xe9.jpg"}]}', r"not valid UTF-8 at byte 29 \(line 1, column 30\)"),
        (b"[1, 2]", r"top level: must be an object with an 'images' list, got list"),
        (b'{"annotations": []}', r"top level: missing field 'images'"),
        (b'{"images": {"0": {}}}', r"top level: field 'images' must be list, got dict"),
        (b'{"images": [7]}', r"images\[0\]: must be an object, got int"),
    ],
)
def test_karpathy_broken_files(tmp_path, root, content, message):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(CaptionDataError, match=rf"broken\.json: {message}"):
        read_karpathy(path, root)


def test_missing_json_file(tmp_path, root):
    with pytest.raises(CaptionDataError, match="nope.json: caption file not found"):
        read_karpathy(tmp_path / "nope.json", root)
    with pytest.raises(CaptionDataError, match="nope.json: caption file not found"):
        read_coco_captions(tmp_path / "nope.json", root)


def test_byte_order_mark_is_accepted(tmp_path, root):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": [_image(0, "test", ["A dog"])]}).encode())
    splits, _ = read_karpathy(path, root)
    assert splits["test"][0].image_id == 0


# ---------------------------------------------------------------------------------------------- COCO captions
def _coco(images: list[tuple[int, str]], annotations: list[tuple[int, int, str]]) -> dict:
    return {"images": [{"id": i, "file_name": name, "width": 4, "height": 4} for i, name in images],
            "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in annotations]}


def test_coco_reads_groups_and_tokenizes(tmp_path, root):
    data = _coco([(5, "train2014/img0.jpg"), (6, "train2014/img1.jpg")],
                 [(1, 6, "A Cat."), (2, 5, "A dog, running."), (3, 6, "Two cats")])
    records, report = read_coco_captions(_write(tmp_path / "c.json", data), root)
    assert [r.image_id for r in records] == [5, 6]  # images[] order
    assert records[1].captions == ["A Cat.", "Two cats"] and records[1].tokens == [["a", "cat"], ["two", "cats"]]
    assert records[0].path == str(root / "train2014/img0.jpg")
    assert (report.num_images, report.num_captions, report.num_skipped) == (2, 3, 0)


def test_coco_write_read_round_trip(tmp_path, root):
    records = [CaptionRecord(str(root / "train2014/img3.jpg"), 3, ["a dog", "the dog"], [["a", "dog"], ["the", "dog"]]),
               {"path": str(root / "train2014/img4.jpg"), "image_id": 4, "captions": ["a cat"]}]
    path = write_coco_captions(records, tmp_path / "captions.json", image_root=root)
    back, _ = read_coco_captions(path, root)
    assert back[0] == records[0] and back[1].captions == ["a cat"]
    written = json.loads(path.read_text(encoding="utf-8"))
    assert [a["id"] for a in written["annotations"]] == [1, 2, 3]
    coco = pytest.importorskip("pycocotools.coco")
    api = coco.COCO(str(path))
    assert sorted(api.getImgIds()) == [3, 4] and len(api.imgToAnns[3]) == 2


def test_coco_empty_captions_and_missing_images(tmp_path, root, caplog):
    data = _coco([(0, "train2014/img0.jpg"), (1, "train2014/img1.jpg"), (2, "missing.jpg"), (3, "train2014/img3.jpg")],
                 [(1, 0, "A dog"), (2, 0, "  "), (3, 1, "..."), (4, 2, "A cat")])
    path = _write(tmp_path / "c.json", data)
    with pytest.raises(CaptionDataError, match=r"c\.json: images\[2\] \(id 2\): image file not found"):
        read_coco_captions(path, root, strict=True)
    with caplog.at_level(logging.WARNING):
        records, report = read_coco_captions(path, root)
    assert [r.image_id for r in records] == [0] and records[0].captions == ["A dog"]
    assert report.skipped == {"empty sentence dropped": 2, "image without captions skipped": 2,
                              "missing image file skipped": 1}
    assert report.examples["image without captions skipped"] == ["images[1] (id 1)", "images[3] (id 3)"]
    assert "annotations[1] (id 2)" in report.examples["empty sentence dropped"]
    assert "missing image file skipped" in caplog.text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["images"][1].pop("id"), r"images\[1\]: missing field 'id'"),
        (lambda d: d["images"][1].update(id=0),
         r"images\[1\] \(id 0\): duplicate image id 0, first used by images\[0\]"),
        (lambda d: d["images"][1].update(file_name=None), r"images\[1\] \(id 1\): field 'file_name' must be str"),
        (lambda d: d["images"][1].update(file_name=""), r"field 'file_name' is empty"),
        (lambda d: d["annotations"][1].pop("caption"), r"annotations\[1\] \(id 11\): missing field 'caption'"),
        (lambda d: d["annotations"][1].update(caption=["a", "dog"]), r"field 'caption' must be str, got list"),
        (lambda d: d["annotations"][1].update(image_id="1"), r"field 'image_id' must be int, got str"),
        (lambda d: d["annotations"][1].update(image_id=42),
         r"field 'image_id' is 42, which no entry of images\[\] has"),
        (lambda d: d["annotations"][1].update(id=10), r"annotations\[1\] \(id 10\): duplicate annotation id 10"),
        (lambda d: d["annotations"].__setitem__(1, "a dog"), r"annotations\[1\]: must be an object, got str"),
        (lambda d: d.pop("annotations"), r"top level: missing field 'annotations'"),
        (lambda d: d.update(images=None), r"top level: field 'images' must be list, got NoneType"),
    ],
)
def test_coco_bad_records(tmp_path, root, mutate, message):
    data = _coco([(0, "train2014/img0.jpg"), (1, "train2014/img1.jpg")], [(10, 0, "A dog"), (11, 1, "A cat")])
    mutate(data)
    with pytest.raises(CaptionDataError, match=rf"c\.json: (.*: )?{message}"):
        read_coco_captions(_write(tmp_path / "c.json", data), root)


def test_coco_broken_files(tmp_path, root):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"images": [], "annotations": [{"caption": "na\xefve"}]}')
    with pytest.raises(CaptionDataError, match=r"c\.json: not valid UTF-8 at byte 46 \(line 1, column 47\)"):
        read_coco_captions(path, root)
    path.write_bytes(b'{"images": [],\n"annotations": [}')
    with pytest.raises(CaptionDataError, match=r"c\.json: invalid JSON at line 2, column 17"):
        read_coco_captions(path, root)
    path.write_bytes(b'"captions"')
    with pytest.raises(CaptionDataError, match=r"top level: must be an object with 'images' and 'annotations'"):
        read_coco_captions(path, root)
