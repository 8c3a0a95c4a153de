"""Procedural scenes: determinism, exact annotations, caption alignment, data set tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from visattn.data.scene_captions import FUNCTION_WORDS, SIZE_WORDS, VOCABULARY, describe_scene, spatial_relation
from visattn.data.scenes import CLASS_NAMES, COLOUR_NAMES, SceneConfig, SceneDataset, make_scene
from visattn.data.sprites import PALETTE, PLURAL_NAMES, SpriteBank

KINDS = ("single", "multi", "caption")
PLURAL_TO_CLASS = {plural: name for name, plural in PLURAL_NAMES.items()}


def scenes(kind: str, count: int = 25, **changes):
    config = SceneConfig(kind=kind, **changes)
    return config, [make_scene(config, 3, i) for i in range(count)]


def test_class_and_colour_lists():
    assert CLASS_NAMES[:10] == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert len(CLASS_NAMES) == 16 and len(set(CLASS_NAMES)) == 16
    assert set(COLOUR_NAMES) == set(PALETTE) and len(COLOUR_NAMES) == 8


def test_every_sprite_renders_at_its_size():
    bank = SpriteBank()
    for label in range(len(CLASS_NAMES)):
        alpha = bank.mask(label, 20, 0.0)
        assert alpha.dtype == np.float32 and 0.0 <= alpha.min() and alpha.max() <= 1.0
        assert max(alpha.shape) in (19, 20, 21)  # longest side is the requested size (+-1 from resampling)
        assert (alpha >= 0.5).sum() > 20
        assert bank.mask(label, 20, 0.0) is alpha  # cached
        assert bank.mask(label, 20, 1.0) is alpha  # 1 degree rounds to the same 5 degree step


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_and_index_give_identical_scenes(kind):
    config = SceneConfig(kind=kind)
    a, b = make_scene(config, 7, 11), make_scene(config, 7, 11)
    assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["masks"], b["masks"])
    assert a["objects"] == b["objects"] and a.get("captions") == b.get("captions")
    other_index, other_seed = make_scene(config, 7, 12), make_scene(config, 8, 11)
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(other_index["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(other_seed["image"]))


@pytest.mark.parametrize("kind", KINDS)
def test_boxes_are_tight_around_nonempty_masks_inside_the_image(kind):
    config, samples = scenes(kind)
    size = config.image_size
    low, high = config.object_range
    for sample in samples:
        boxes, labels, masks = sample["boxes"], sample["labels"], sample["masks"]
        n = len(labels)
        assert low <= n <= high
        assert boxes.shape == (n, 4) and boxes.dtype == np.float32
        assert labels.dtype == np.int64 and ((0 <= labels) & (labels < len(CLASS_NAMES))).all()
        assert masks.shape == (n, size, size) and masks.dtype == bool
        assert len(sample["objects"]) == n and sample["image"].size == (size, size)
        for box, mask in zip(boxes, masks):
            assert mask.sum() > 10
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size
        assert not (masks.sum(axis=0) > 1).any(), "visible masks must not overlap"
        if kind == "single":
            assert sample["label"] == labels[0]


def test_objects_have_their_stated_colour_class_and_size():
    config, samples = scenes("multi", 40, noise=0.0, num_objects=(1, 1))  # one object: nothing occludes it
    size = config.image_size
    for sample in samples:
        pixels = np.asarray(sample["image"], dtype=np.float32) / 255.0
        for obj, label, mask, box in zip(sample["objects"], sample["labels"], sample["masks"], sample["boxes"]):
            assert obj["class_name"] == CLASS_NAMES[label] and obj["label"] == label
            mean = pixels[mask].mean(axis=0)
            expected = np.array(PALETTE[obj["colour"]]) / 255.0
            # The mask is drawn pixels at alpha >= 0.5: mostly pure colour, plus half-blended edges.
            assert np.abs(mean - expected).max() < 0.25, (obj, mean, expected)
            longest = max(box[2] - box[0], box[3] - box[1])
            if obj["size"] == "small":  # rotation by <= 15 degrees grows the extent by at most 1.25x
                assert longest <= config.small_scale[1] * size * 1.25 + 1, (obj, box)
            else:
                assert longest >= config.large_scale[0] * size - 2, (obj, box)
            assert obj["centre"] == ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def test_clutter_never_touches_the_objects():
    base = SceneConfig(kind="multi", noise=0.0, background="plain", clutter=0)
    cluttered = dataclasses.replace(base, clutter=30)
    for index in range(15):
        clean = make_scene(base, 0, index)
        busy = make_scene(cluttered, 0, index)
        assert np.array_equal(clean["boxes"], busy["boxes"])
        changed = (np.asarray(clean["image"]) != np.asarray(busy["image"])).any(axis=2)
        assert changed.any(), "fragments were drawn"
        for x1, y1, x2, y2 in clean["boxes"].astype(int):
            assert not changed[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1].any()


def test_single_scene_clutter_is_dense():
    config = SceneConfig(kind="single", image_size=60)
    assert config.object_range == (1, 1) and config.num_clutter >= 15
    plain = dataclasses.replace(config, clutter=0, noise=0.0, background="plain", background_level=(0.0, 0.0))
    busy = dataclasses.replace(plain, clutter=None)
    drawn = [(np.asarray(make_scene(busy, 0, i)["image"]).max(axis=2) > 60).sum() for i in range(10)]
    alone = [(np.asarray(make_scene(plain, 0, i)["image"]).max(axis=2) > 60).sum() for i in range(10)]
    assert np.mean(drawn) > 2 * np.mean(alone), "fragments should cover more than the object itself"


def token_kind(word: str) -> str:
    if word in FUNCTION_WORDS:
        return "function"
    if word in SIZE_WORDS:
        return "size"
    if word in COLOUR_NAMES:
        return "colour"
    if word in PLURAL_TO_CLASS:
        return "plural"
    assert word in CLASS_NAMES, word
    return "class"


def test_caption_vocabulary_is_small_and_complete():
    assert len(VOCABULARY) == len(set(VOCABULARY)) < 60
    _, samples = scenes("caption", 60)
    for sample in samples:
        for caption in sample["captions"]:
            assert caption == caption.lower() and set(caption.split()) <= set(VOCABULARY), caption


def test_caption_alignment_points_at_the_named_objects():
    _, samples = scenes("caption", 60)
    saw_count_phrase = False
    for sample in samples:
        objects = sample["objects"]
        captions, alignment = sample["captions"], sample["alignment"]
        assert len(captions) >= 5 and len(set(captions)) == len(captions)
        assert len(alignment) == len(captions)
        for caption, indices in zip(captions, alignment):
            words = caption.split()
            assert len(indices) == len(words)
            for k, (word, index) in enumerate(zip(words, indices)):
                kind = token_kind(word)
                if kind == "class" and index == -1:  # a count word: "there are two red sevens"
                    assert words[k + 1] in COLOUR_NAMES and words[k + 2] in PLURAL_TO_CLASS, caption
                    saw_count_phrase = True
                    continue
                if kind == "function":
                    assert index == -1, (caption, word)
                    continue
                assert 0 <= index < len(objects), (caption, word, index)
                obj = objects[index]
                expected = {"size": obj["size"], "colour": obj["colour"], "class": obj["class_name"],
                            "plural": PLURAL_NAMES[obj["class_name"]]}[kind]
                assert word == expected, (caption, word, obj)
        # The first caption names every object, left to right.
        named = [i for w, i in zip(captions[0].split(), alignment[0]) if w in CLASS_NAMES and i >= 0]
        assert sorted(named) == list(range(len(objects)))
        xs = [objects[i]["centre"][0] for i in named]
        assert xs == sorted(xs)
    assert saw_count_phrase


def test_count_phrases_are_true():
    _, samples = scenes("caption", 80)
    checked = 0
    for sample in samples:
        words = sample["captions"][3].split()
        assert words[:2] == ["there", "is" if len(sample["objects"]) == 1 else "are"]
        for k, word in enumerate(words):
            if word in PLURAL_TO_CLASS and words[k - 2] in ("two", "three", "four"):
                colour, name = words[k - 1], PLURAL_TO_CLASS[word]
                actual = sum(o["colour"] == colour and o["class_name"] == name for o in sample["objects"])
                assert actual == ("two", "three", "four").index(words[k - 2]) + 2
                checked += 1
    assert checked > 0


RELATION_WORDS = ("left", "right", "above", "below")


def test_relations_are_true_to_the_geometry():
    _, samples = scenes("caption", 80)
    stated = 0
    for sample in samples:
        boxes = sample["boxes"]
        for caption, indices in zip(sample["captions"][5:], sample["alignment"][5:]):
            words = caption.split()
            relation = next(w for w in words if w in RELATION_WORDS)
            content = [i for i in indices if i >= 0]
            subject, other = content[0], content[-1]
            assert subject != other
            a, b = boxes[subject], boxes[other]
            if relation == "left":
                assert a[2] < b[0]
            elif relation == "right":
                assert a[0] > b[2]
            elif relation == "above":
                assert a[3] < b[1]
            else:
                assert a[1] > b[3]
            assert spatial_relation(a, b) == relation
            stated += 1
    assert stated > 10


def test_spatial_relation_only_when_unambiguous():
    assert spatial_relation([0, 0, 10, 10], [20, 0, 30, 10]) == "left"
    assert spatial_relation([20, 0, 30, 10], [0, 0, 10, 10]) == "right"
    assert spatial_relation([0, 0, 10, 10], [0, 20, 10, 30]) == "above"
    assert spatial_relation([0, 20, 10, 30], [0, 0, 10, 10]) == "below"
    assert spatial_relation([0, 0, 10, 10], [5, 0, 15, 10]) is None  # overlapping
    assert spatial_relation([0, 0, 10, 10], [20, 20, 30, 30]) is None  # diagonal


def test_describe_scene_single_object_and_bad_input():
    objects = [{"class_name": "eight", "colour": "orange", "size": "large"}]
    captions, alignment = describe_scene(objects, np.array([[1, 1, 9, 9]], dtype=np.float32))
    assert captions[:5] == ["a large orange eight", "an orange eight", "a large eight", "there is an orange eight",
                            "the eight is large and orange"]
    assert alignment[1] == [-1, 0, 0]
    with pytest.raises(ValueError, match="at least one object"):
        describe_scene([], np.zeros((0, 4)))
    with pytest.raises(ValueError, match="2 boxes"):
        describe_scene(objects, np.zeros((2, 4)))


def test_config_validation_and_kind_defaults():
    with pytest.raises(ValueError, match="single, multi, caption"):
        SceneConfig(kind="pairs")
    with pytest.raises(ValueError, match="num_objects"):
        SceneConfig(kind="single", num_objects=(1, 3))
    with pytest.raises(ValueError, match="background"):
        SceneConfig(background="stripes")
    with pytest.raises(ValueError, match="clutter_classes"):
        SceneConfig(clutter_classes=0)
    with pytest.raises(ValueError, match="large_scale"):
        SceneConfig(large_scale=(0.5, 0.9))
    config = SceneConfig(kind="multi", num_objects=[2, 3], small_scale=[0.25, 0.3])  # lists, as from JSON
    assert config.num_objects == (2, 3) and config.small_scale == (0.25, 0.3)
    assert SceneConfig(kind="caption").object_range == (1, 4)
    with pytest.raises(ValueError, match="non-negative"):
        make_scene(SceneConfig(), -1, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_dataset_tensors(kind):
    config = SceneConfig(kind=kind, image_size=48)
    data = SceneDataset(config, num_samples=6, seed=2)
    assert len(data) == 6
    sample = data[4]
    image = sample["image"]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and image.is_contiguous()
    assert 0.0 <= image.min() and image.max() <= 1.0
    raw = make_scene(config, 2, 4)
    assert torch.equal(image, torch.from_numpy(np.asarray(raw["image"]).copy()).permute(2, 0, 1).float() / 255)
    n = len(raw["labels"])
    assert sample["boxes"].shape == (n, 4) and sample["boxes"].dtype == torch.float32
    assert sample["labels"].dtype == torch.int64 and sample["masks"].dtype == torch.bool
    assert sample["masks"].shape == (n, 48, 48) and sample["image_id"] == 4
    assert torch.equal(data[-2]["image"], image)
    with pytest.raises(IndexError):
        data[6]


def test_materialize_matches_drawing_on_demand_with_and_without_workers():
    config = SceneConfig(kind="caption", image_size=32, small_scale=(0.26, 0.34))
    lazy = SceneDataset(config, num_samples=10, seed=5)
    serial = SceneDataset(config, num_samples=10, seed=5).materialize(chunk_size=3)
    pooled = SceneDataset(config, num_samples=10, seed=5).materialize(num_workers=2, chunk_size=3)
    assert serial.is_materialized and not lazy.is_materialized
    for i in range(10):
        expected = lazy[i]
        for cached in (serial[i], pooled[i]):
            assert torch.equal(cached["image"], expected["image"])
            assert torch.equal(cached["boxes"], expected["boxes"])
            assert torch.equal(cached["masks"], expected["masks"])
            assert cached["captions"] == expected["captions"] and cached["alignment"] == expected["alignment"]


def test_transform_is_applied_and_cannot_corrupt_the_cache():
    def flip_in_place(sample):
        sample["image"].mul_(0)
        sample["boxes"][:, 0] = -1.0
        return sample

    config = SceneConfig(kind="multi", image_size=32)
    data = SceneDataset(config, num_samples=2, transform=flip_in_place).materialize()
    assert data[0]["image"].abs().sum() == 0 and (data[0]["boxes"][:, 0] == -1).all()
    plain = SceneDataset(config, num_samples=2).materialize()
    data.transform = None
    assert torch.equal(data[0]["boxes"], plain[0]["boxes"]) and torch.equal(data[0]["image"], plain[0]["image"])
