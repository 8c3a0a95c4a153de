"""The exact caption content metric on hand-written captions: right, missing, wrong colour, invented, counts."""

from __future__ import annotations

import numpy as np
import pytest

from visattn.data.scene_captions import describe_scene
from visattn.metrics.caption_content import (CaptionContent, Mention, caption_content, content_scores,
                                             match_objects, parse_caption)

SEVEN = {"class_name": "seven", "colour": "red", "size": "large"}
CIRCLE = {"class_name": "circle", "colour": "blue", "size": "small"}
SCENE = [SEVEN, CIRCLE]
CROSSES = [{"class_name": "cross", "colour": "white", "size": "small"},
           {"class_name": "cross", "colour": "white", "size": "large"}]


def test_parse_reads_every_template_of_the_grammar():
    assert parse_caption("a large red seven and a small blue circle") == [
        Mention("seven", "red", "large"), Mention("circle", "blue", "small")]
    assert parse_caption("the seven is large and red and the circle is small and blue") == [
        Mention("seven", "red", "large"), Mention("circle", "blue", "small")]
    assert parse_caption("there are two white crosses and a red seven") == [
        Mention("cross", "white", None, 2), Mention("seven", "red")]
    assert parse_caption("a red seven to the left of a blue circle") == [Mention("seven", "red"),
                                                                          Mention("circle", "blue")]
    # "two" is a count before an attribute or a plural, the digit elsewhere
    assert parse_caption("a small two and the two is red") == [Mention("two", None, "small"), Mention("two", "red")]
    assert parse_caption("a large seven") == [Mention("seven", None, "large")]
    assert parse_caption("<unk> blah") == []


def test_right_caption_scores_one_and_paraphrases_score_the_same():
    scores = caption_content("a large red seven and a small blue circle", SCENE)
    assert scores["object_f1"] == 1.0 and scores["attribute_f1"] == 1.0 and scores["count_f1"] == 1.0
    assert scores["content_exact"] == 1.0
    for paraphrase in ("the circle is small and blue and the seven is large and red",
                       "a small blue circle and a large red seven"):
        assert caption_content(paraphrase, SCENE) == scores
    # the grammar's own references of a scene are all right (objects), whatever the template
    boxes = np.array([[2, 2, 20, 20], [40, 4, 60, 22]], dtype=float)
    captions, _ = describe_scene(SCENE, boxes)
    for caption in captions:
        got = caption_content(caption, SCENE)
        assert got["object_f1"] == 1.0 and got["count_f1"] == 1.0, caption
    # a caption that leaves sizes out is right but says less
    colour_only = caption_content("a red seven and a blue circle", SCENE)
    assert colour_only["object_f1"] == 1.0 and colour_only["attribute_precision"] == 1.0
    assert colour_only["attribute_recall"] == pytest.approx(4 / 6)


def test_missing_object_wrong_colour_invented_object():
    missing = caption_content("a large red seven", SCENE)
    assert missing["object_precision"] == 1.0 and missing["object_recall"] == 0.5
    assert missing["count_recall"] == 0.5 and missing["content_exact"] == 0.0
    wrong = caption_content("a large green seven and a small blue circle", SCENE)
    assert wrong["object_precision"] == 0.5 and wrong["object_recall"] == 0.5
    assert wrong["attribute_precision"] == pytest.approx(5 / 6)
    assert wrong["count_f1"] == 1.0  # the number of sevens is still right
    invented = caption_content("a large red seven and a small blue circle and a white star", SCENE)
    assert invented["object_precision"] == pytest.approx(2 / 3) and invented["object_recall"] == 1.0
    assert invented["count_precision"] == pytest.approx(2 / 3) and invented["count_recall"] == 1.0


def test_counts_and_the_issue_examples():
    assert caption_content("there are two white crosses", CROSSES)["object_f1"] == 1.0
    assert caption_content("a white cross and a white cross", CROSSES) == caption_content(
        "there are two white crosses", CROSSES)
    three = caption_content("there are three white crosses", CROSSES)
    assert three["count_f1"] == 0.0 and three["object_precision"] == pytest.approx(2 / 3)
    # the figures of issue 12: fluent, wrong
    assert caption_content("a small one and a small one", CROSSES)["object_f1"] == 0.0
    stars = [{"class_name": "star", "colour": "green", "size": "small"}] * 2
    assert caption_content("a green diamond and a green one", stars)["object_f1"] == 0.0
    assert caption_content("", stars)["object_recall"] == 0.0


def test_hungarian_match_prefers_fully_right_pairs():
    predicted = [{"class_name": "cross", "colour": "white", "size": "large"},
                 {"class_name": "cross", "colour": "white", "size": "small"}]
    assert sorted(match_objects(predicted, CROSSES)) == [(0, 1), (1, 0)]
    assert match_objects([], CROSSES) == []


def test_meter_micro_averages_and_merges():
    a, b, both = CaptionContent(), CaptionContent(), CaptionContent()
    a.update("a large red seven", SCENE)
    b.update("there are two white crosses", CROSSES)
    both.update("a large red seven", SCENE)
    both.update("there are two white crosses", CROSSES)
    assert a.merge(b).compute() == both.compute()
    scores = both.compute()
    assert scores["object_recall"] == pytest.approx(3 / 4) and scores["content_captions"] == 2.0
    assert content_scores({1: "a large red seven", 2: "there are two white crosses"}, {1: SCENE, 2: CROSSES}) == scores


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="no scene objects for image ids \\[2\\]"):
        content_scores({1: "a red seven", 2: "a red seven"}, {1: SCENE})
    with pytest.raises(ValueError, match="object 0 has no colour"):
        caption_content("a seven", [{"class_name": "seven", "size": "large"}])
