"""What a caption says, scored exactly against a procedural scene's objects (SPICE's idea, made exact).

BLEU and CIDEr-D compare n-grams with references, so a fluent caption that names the wrong object can score
well. A procedural scene knows its objects (class, colour, size), and its captions come from a small grammar
(:mod:`visattn.data.scene_captions`), so the content of a caption can be read off exactly:

1. :func:`parse_caption` reads a caption with the grammar's own vocabulary into **mentions**: a class, the
   colour and size the caption gives it (None when unsaid) and a count. Attributes before a noun belong to
   it ("a large red seven"); after "<noun> is" they belong to that noun ("the seven is large and red"); a
   count word before an attribute or a plural is a count ("two blue circles"), otherwise it is the digit
   ("a small two"). Relation words, articles and unknown words carry no content.
2. Each mention stands for ``count`` objects. :func:`match_objects` pairs them one-to-one with the scene's
   objects (Hungarian, maximising first the number of fully right objects, then attribute agreement).
3. Scores, summed over a data set (micro-averaged) by :class:`CaptionContent`:

   - **objects**: a predicted object is right when its match has the same class and every attribute the
     caption states agrees. precision = right / predicted objects, recall = right / scene objects.
   - **attributes**: each predicted object states its class plus the colour and size the caption gives;
     precision = agreeing stated attributes (on matched pairs) / stated attributes, recall = the same /
     (3 · scene objects). A caption that leaves sizes out is right but says less: its recall is lower.
   - **counts**: per class, the number of objects the caption implies against the scene's; a class is
     right when the numbers are equal. precision over the classes the caption names, recall over the
     scene's classes.
   - ``content_exact``: the share of captions whose objects are all right with nothing missing or invented.

Two captions with the same content score the same whatever their template ("a red circle and a red
circle", "there are two red circles"); the order of the objects does not matter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from visattn.data.scene_captions import CLASS_NAMES, COLOUR_NAMES, COUNT_WORDS, PLURAL_NAMES, SIZE_WORDS

__all__ = ["Mention", "parse_caption", "match_objects", "caption_content", "CaptionContent", "content_scores"]

_CLASSES = frozenset(CLASS_NAMES)
_PLURALS = {plural: name for name, plural in PLURAL_NAMES.items()}
_COLOURS = frozenset(COLOUR_NAMES)
_SIZES = frozenset(SIZE_WORDS)
_COUNTS = {word: number for number, word in COUNT_WORDS.items()}
_ATTRIBUTES = ("class_name", "colour", "size")


@dataclass(frozen=True)
class Mention:
    """One noun phrase of a caption: ``count`` objects of ``class_name`` with the stated colour and size.

    Attributes:
        class_name: a class of :data:`visattn.data.sprites.CLASS_NAMES`.
        colour, size: the attribute the caption states, or None.
        count: how many objects the phrase names (1 for a singular noun).
    """

    class_name: str
    colour: str | None = None
    size: str | None = None
    count: int = 1


def parse_caption(caption: str) -> list[Mention]:
    """The mentions of a caption, in order (module docstring, step 1). Case and extra spaces are ignored."""
    words = caption.lower().split()
    mentions: list[Mention] = []
    pending: dict[str, Any] = {}  # colour / size / count read before their noun
    after_is = False  # inside "<noun> is ...": attributes go to the last mention
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in _SIZES or word in _COLOURS:
            key = "size" if word in _SIZES else "colour"
            if after_is and mentions:
                mentions[-1] = _with(mentions[-1], key, word)
            else:
                pending[key] = word
        elif word in _COUNTS and (following in _COLOURS or following in _SIZES or following in _PLURALS):
            pending["count"] = _COUNTS[word]
            after_is = False
        elif word in _CLASSES or word in _PLURALS:
            plural = word in _PLURALS
            count = pending.pop("count", 2 if plural else 1)
            mentions.append(Mention(_PLURALS.get(word, word), pending.pop("colour", None), pending.pop("size", None),
                                    count))
            pending.clear()
            after_is = following in ("is", "are")
        elif word in ("is", "are", "and"):
            continue  # "is" is handled by the noun before it; "and" keeps an attribute list going
        else:  # articles, "there", relation words, unknown words: a new phrase begins
            after_is = False
    return mentions


def _with(mention: Mention, key: str, value: str) -> Mention:
    return Mention(**{**mention.__dict__, key: value})


def _expand(mentions: Sequence[Mention]) -> list[dict[str, str | None]]:
    """One dict (class_name, colour, size) per object the mentions name."""
    return [{"class_name": m.class_name, "colour": m.colour, "size": m.size}
            for m in mentions for _ in range(max(m.count, 0))]


def _right(pred: Mapping[str, Any], truth: Mapping[str, Any]) -> bool:
    return all(pred[key] is None or pred[key] == truth[key] for key in _ATTRIBUTES)


def _agreeing(pred: Mapping[str, Any], truth: Mapping[str, Any]) -> int:
    return sum(pred[key] is not None and pred[key] == truth[key] for key in _ATTRIBUTES)


def match_objects(predicted: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Pairs ``(predicted index, truth index)``, one-to-one, maximising right objects then agreeing attributes.

    Args:
        predicted: per predicted object ``class_name``, ``colour``, ``size`` (None = not stated).
        truth: the scene's objects, each with ``class_name``, ``colour`` and ``size``.
    """
    if not predicted or not truth:
        return []
    gain = np.array([[4 * _right(p, t) + _agreeing(p, t) for t in truth] for p in predicted], dtype=np.float64)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def _check_objects(objects: Sequence[Mapping[str, Any]]) -> None:
    for k, obj in enumerate(objects):
        missing = [key for key in _ATTRIBUTES if key not in obj]
        if missing:
            raise ValueError(f"caption content: scene object {k} has no {', '.join(missing)} (needs class_name, "
                             f"colour and size)")


def caption_content(caption: str, objects: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One caption's content scores against its scene's ``objects`` (the keys of :class:`CaptionContent`)."""
    meter = CaptionContent()
    meter.update(caption, objects)
    return meter.compute()


class CaptionContent:
    """Sums of the content counts over captions; :meth:`compute` gives the micro-averaged scores.

    ``compute()`` returns ``object_precision``, ``object_recall``, ``object_f1``, the same for
    ``attribute_*`` and ``count_*``, ``content_exact`` and ``content_captions`` (captions scored). Every
    ratio with an empty denominator is 0.0, except precision over no predictions with nothing to find (1.0).
    """

    _KEYS = ("objects_right", "objects_predicted", "objects_true", "attributes_right", "attributes_stated",
             "attributes_true", "counts_right_pred", "counts_predicted", "counts_right_true", "counts_true",
             "exact", "captions")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self._KEYS, 0)

    def update(self, caption: str, objects: Sequence[Mapping[str, Any]]) -> None:
        """Add one caption and its scene's objects (dicts with ``class_name``, ``colour``, ``size``)."""
        _check_objects(objects)
        predicted = _expand(parse_caption(caption))
        pairs = match_objects(predicted, objects)
        right = sum(_right(predicted[p], objects[t]) for p, t in pairs)
        predicted_classes = Counter(p["class_name"] for p in predicted)
        true_classes = Counter(obj["class_name"] for obj in objects)
        counts_right = sum(predicted_classes[c] == true_classes[c] for c in predicted_classes)
        sums = self.sums
        sums["objects_right"] += right
        sums["objects_predicted"] += len(predicted)
        sums["objects_true"] += len(objects)
        sums["attributes_right"] += sum(_agreeing(predicted[p], objects[t]) for p, t in pairs)
        sums["attributes_stated"] += sum(sum(p[key] is not None for key in _ATTRIBUTES) for p in predicted)
        sums["attributes_true"] += len(_ATTRIBUTES) * len(objects)
        sums["counts_right_pred"] += counts_right
        sums["counts_predicted"] += len(predicted_classes)
        sums["counts_right_true"] += counts_right  # a class right for the caption is right for the scene
        sums["counts_true"] += len(true_classes)
        sums["exact"] += int(right == len(predicted) == len(objects))
        sums["captions"] += 1

    def merge(self, other: CaptionContent) -> CaptionContent:
        """Both meters' sums in this one (e.g. several processes' shares); returns self."""
        for key in self._KEYS:
            self.sums[key] += other.sums[key]
        return self

    def compute(self) -> dict[str, float]:
        s = self.sums
        out: dict[str, float] = {}
        for name, right, predicted, right_true, true in (
                ("object", "objects_right", "objects_predicted", "objects_right", "objects_true"),
                ("attribute", "attributes_right", "attributes_stated", "attributes_right", "attributes_true"),
                ("count", "counts_right_pred", "counts_predicted", "counts_right_true", "counts_true")):
            precision = s[right] / s[predicted] if s[predicted] else float(s[true] == 0)
            recall = s[right_true] / s[true] if s[true] else 1.0
            out[f"{name}_precision"], out[f"{name}_recall"] = precision, recall
            out[f"{name}_f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out["content_exact"] = s["exact"] / s["captions"] if s["captions"] else 0.0
        out["content_captions"] = float(s["captions"])
        return out


def content_scores(captions: Mapping[Any, str], objects: Mapping[Any, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """Content scores of generated ``captions`` (image id -> caption) against ``objects`` (image id -> objects).

    Raises:
        ValueError: an image id of ``captions`` has no objects (naming the first few), or none is given.
    """
    missing = [key for key in captions if key not in objects]
    if missing:
        raise ValueError(f"caption content: no scene objects for image ids {missing[:5]}")
    if not captions:
        raise ValueError("caption content: no captions to score")
    meter = CaptionContent()
    for key, caption in captions.items():
        meter.update(caption, objects[key])
    return meter.compute()
