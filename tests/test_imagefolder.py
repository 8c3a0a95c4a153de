"""ImageFolder: reading root/<class>/<image>, skipping or refusing corrupt files, export -> read round trip."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.data.imagefolder import ImageFolder, export_imagefolder
from visattn.data.images import ImageLoadError
from visattn.data.scenes import CLASS_NAMES, SceneConfig, SceneDataset


def make_tree(root: Path, counts: dict[str, int], size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noise: files of some length
            Image.fromarray(pixels, "RGB").save(root / name / f"{k}.png")


def add_bad_files(root: Path) -> tuple[Path, Path]:
    truncated = root / "cat" / "zz_truncated.png"
    data = (root / "cat" / "0.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = root / "dog" / "empty.jpg"
    empty.write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    return truncated, empty


def test_export_then_read_back_is_identical(tmp_path):
    data = SceneDataset(SceneConfig(kind="single", image_size=32), num_samples=24, seed=1)
    split_dir = export_imagefolder(data, tmp_path / "out", CLASS_NAMES, split="test")
    assert split_dir == tmp_path / "out" / "test"
    assert sorted(p.name for p in split_dir.iterdir()) == sorted(CLASS_NAMES)  # empty classes kept
    folder = ImageFolder(split_dir, classes=CLASS_NAMES)
    assert len(folder) == 24 and folder.skipped == [] and folder.class_names == CLASS_NAMES
    for sample in folder:
        original = data[int(Path(sample["path"]).stem)]
        assert sample["label"] == original["label"]
        assert Path(sample["path"]).parent.name == CLASS_NAMES[original["label"]]
        assert torch.equal(sample["image"], original["image"])
    assert [folder[i]["image_id"] for i in range(3)] == [0, 1, 2]


def test_class_names_are_sorted_folders_and_labels_follow(tmp_path):
    make_tree(tmp_path, {"dog": 2, "cat": 3, ".hidden": 1})
    folder = ImageFolder(tmp_path, size=8)
    assert folder.class_names == ("cat", "dog")
    assert [label for _, label in folder.samples] == [0, 0, 0, 1, 1]
    sample = folder[3]
    assert sample["image"].shape == (3, 8, 8) and sample["label"] == 1 and sample["path"].endswith("0.png")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] are not in the given classes"):
        ImageFolder(tmp_path, classes=["cat"])


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    make_tree(tmp_path, {"cat": 3, "dog": 2})
    truncated, empty = add_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="visattn.data.imagefolder"):
        folder = ImageFolder(tmp_path)
    assert len(folder) == 5
    assert [path for path, _ in folder.skipped] == [str(truncated), str(empty)]
    reasons = dict(folder.skipped)
    assert "truncated" in reasons[str(truncated)] and "empty file" in reasons[str(empty)]
    assert folder.ignored == [str(tmp_path / "dog" / "notes.txt")]
    summary = folder.report.summary()
    assert "5 images, 2 classes" in summary and "2 unreadable files skipped" in summary
    assert str(truncated) in summary and "1 non-image files ignored" in summary
    assert summary in caplog.text


def test_strict_raises_naming_the_file(tmp_path):
    make_tree(tmp_path, {"cat": 3, "dog": 2})
    truncated, _ = add_bad_files(tmp_path)
    with pytest.raises(ImageLoadError, match="zz_truncated.png: truncated or corrupt") as info:
        ImageFolder(tmp_path, strict=True)
    assert info.value.path == str(truncated)


def test_lazy_validation_skips_on_access(tmp_path):
    make_tree(tmp_path, {"cat": 3, "dog": 2})
    truncated, empty = add_bad_files(tmp_path)
    folder = ImageFolder(tmp_path, validate=False)
    assert len(folder) == 7 and folder.skipped == []
    index = [path for path, _ in folder.samples].index(str(truncated))
    sample = folder[index]  # the next loadable file (dog/0.png) stands in
    assert sample["path"] == folder.samples[index + 1][0] and sample["image_id"] == index + 1
    assert sample["path"].endswith("dog/0.png") and sample["label"] == 1
    assert folder.skipped == [(str(truncated), folder.skipped[0][1])] and "truncated" in folder.skipped[0][1]
    last = folder[len(folder) - 1]  # dog/empty.jpg is last; the search wraps around to cat/0.png
    assert last["path"].endswith("cat/0.png")
    assert [path for path, _ in folder.skipped] == [str(truncated), str(empty)]
    strict = ImageFolder(tmp_path, validate=False, strict=True)
    with pytest.raises(ImageLoadError, match="zz_truncated.png"):
        strict[index]


def test_bad_roots(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="none of the 1 image files could be read"):
        ImageFolder(tmp_path)


def test_export_rejects_bad_samples(tmp_path):
    good = {"image": torch.rand(3, 4, 4), "label": 0, "image_id": 1}
    with pytest.raises(ValueError, match="sample 0 .*in \\[0, 1\\]"):
        export_imagefolder([{**good, "image": good["image"] * 3}], tmp_path, ["a"])
    with pytest.raises(ValueError, match="has no 'label'"):
        export_imagefolder([{"image": good["image"], "image_id": 1}], tmp_path, ["a"])
    with pytest.raises(ValueError, match="label 2 out of range"):
        export_imagefolder([{**good, "label": 2}], tmp_path, ["a", "b"])
    with pytest.raises(ValueError, match="duplicate image_id"):
        export_imagefolder([good, good], tmp_path, ["a"])
