"""Reference captions for procedural scenes, with every word aligned to the object it names.

Given a scene's objects (class, colour, size) and their boxes, :func:`describe_scene` writes five captions
from fixed templates, plus two for a spatial relation when the geometry makes one unambiguous:

=============  ==========================================================
template       example
=============  ==========================================================
full           ``a large red seven and a small blue circle``
colour         ``a red seven and a blue circle``
size           ``a large seven and a small circle``
count          ``there are two blue circles and a red seven``
property       ``the seven is large and red and the circle is small and blue``
relation       ``a red seven to the left of a blue circle`` and the converse
               ``a blue circle to the right of a red seven`` (or above / below)
=============  ==========================================================

Objects are always named left to right (by box centre), so that a small model can learn two- and
three-object scenes; only the converse relation caption breaks that order. Captions are lower case
without punctuation; digits are written as words. The whole vocabulary is :data:`VOCABULARY` (55 words).

Alignment: for each caption, one integer per whitespace token: the index (into the scene's object list) of
the object the token names for size, colour and class words, and -1 for function words (articles, "and",
"there is", relation words) and count words ("two"), which name no single object. In a count phrase such as
"two blue circles" the colour and plural noun point at the leftmost object of the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from visattn.data.sprites import CLASS_NAMES, COLOUR_NAMES, PLURAL_NAMES

__all__ = ["CLASS_NAMES", "COLOUR_NAMES", "COUNT_WORDS", "FUNCTION_WORDS", "PLURAL_NAMES", "SIZE_WORDS",
           "VOCABULARY", "describe_scene", "spatial_relation"]

FUNCTION_WORDS: tuple[str, ...] = (
    "a", "an", "and", "the", "there", "is", "are", "to", "of", "left", "right", "above", "below",
)
SIZE_WORDS: tuple[str, ...] = ("small", "large")
VOCABULARY: tuple[str, ...] = (
    FUNCTION_WORDS + SIZE_WORDS + COLOUR_NAMES + CLASS_NAMES + tuple(PLURAL_NAMES[name] for name in CLASS_NAMES)
)
"""Every word a scene caption can contain (count words two/three/four are also digit names)."""
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
"""Count words of the count template ("two blue circles"); they are digit class names too."""
_COUNT_WORDS = COUNT_WORDS

Token = tuple[str, int]  # (word, object index or -1)


def spatial_relation(
    box_a: Sequence[float], box_b: Sequence[float], *, margin: float = 1.0, dominance: float = 1.5
) -> str | None:
    """Where box ``a`` lies relative to box ``b``, only when that is unambiguous.

    ``a`` is "left" of ``b`` when a's right edge is at least ``margin`` pixels left of b's left edge and the
    centres are further apart horizontally than vertically by the factor ``dominance`` (and likewise for
    "right", "above", "below"). Overlapping or diagonal pairs give None.

    Args:
        box_a, box_b: xyxy boxes in pixels (y grows downwards).

    Returns:
        "left", "right", "above", "below" or None.
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    dx = (bx1 + bx2 - ax1 - ax2) / 2  # centre offset of b from a
    dy = (by1 + by2 - ay1 - ay2) / 2
    horizontal = abs(dx) >= dominance * abs(dy)
    vertical = abs(dy) >= dominance * abs(dx)
    if horizontal and ax2 + margin <= bx1:
        return "left"
    if horizontal and bx2 + margin <= ax1:
        return "right"
    if vertical and ay2 + margin <= by1:
        return "above"
    if vertical and by2 + margin <= ay1:
        return "below"
    return None


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" and not next_word.startswith("one") else "a"


def _noun_phrase(obj: dict[str, Any], index: int, attributes: Sequence[str]) -> list[Token]:
    """'a large red seven' style phrase; ``attributes`` picks among "size" and "colour"."""
    words = [obj[name] for name in attributes] + [obj["class_name"]]
    return [(_article(words[0]), -1)] + [(word, index) for word in words]


def _join(phrases: list[list[Token]]) -> list[Token]:
    tokens: list[Token] = []
    for k, phrase in enumerate(phrases):
        if k:
            tokens.append(("and", -1))
        tokens.extend(phrase)
    return tokens


def _count_phrases(objects: Sequence[dict[str, Any]], order: list[int]) -> list[Token]:
    """'there are two blue circles and a red seven': groups of equal (class, colour), leftmost first."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in order:
        groups.setdefault((objects[i]["class_name"], objects[i]["colour"]), []).append(i)
    phrases = []
    for (class_name, colour), members in groups.items():
        first = members[0]
        if len(members) == 1:
            phrases.append(_noun_phrase(objects[first], first, ("colour",)))
        else:
            count = _COUNT_WORDS[len(members)]
            phrases.append([(count, -1), (colour, first), (PLURAL_NAMES[class_name], first)])
    verb = "is" if len(order) == 1 else "are"
    return [("there", -1), (verb, -1)] + _join(phrases)


def _property_phrases(objects: Sequence[dict[str, Any]], order: list[int]) -> list[Token]:
    """'the seven is large and red and the circle is small and blue'."""
    return _join([
        [("the", -1), (objects[i]["class_name"], i), ("is", -1), (objects[i]["size"], i), ("and", -1),
         (objects[i]["colour"], i)]
        for i in order
    ])


def _relation_captions(
    objects: Sequence[dict[str, Any]], boxes: np.ndarray, order: list[int], rng: np.random.Generator | None,
    max_relations: int,
) -> list[list[Token]]:
    """Two captions (the relation and its converse) for up to ``max_relations`` unambiguous pairs."""
    pairs = []
    for a_pos, i in enumerate(order):
        for j in order[a_pos + 1:]:
            relation = spatial_relation(boxes[i], boxes[j])
            if relation is not None:
                pairs.append((i, j, relation))
    if rng is not None and len(pairs) > 1:
        pairs = [pairs[k] for k in rng.permutation(len(pairs)).tolist()]
    captions = []
    for i, j, relation in pairs[:max_relations]:
        if relation in ("right", "below"):  # make i the left / upper object
            i, j = j, i
        first = _noun_phrase(objects[i], i, ("colour",))
        second = _noun_phrase(objects[j], j, ("colour",))
        if relation in ("left", "right"):
            forward = [("to", -1), ("the", -1), ("left", -1), ("of", -1)]
            converse = [("to", -1), ("the", -1), ("right", -1), ("of", -1)]
        else:
            forward, converse = [("above", -1)], [("below", -1)]
        captions.append(first + forward + second)
        captions.append(second + converse + first)
    return captions


def describe_scene(
    objects: Sequence[dict[str, Any]],
    boxes: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    max_relations: int = 1,
) -> tuple[list[str], list[list[int]]]:
    """Write the reference captions of one scene.

    Args:
        objects: per object a dict with ``class_name``, ``colour`` and ``size`` (words of :data:`VOCABULARY`).
        boxes: (N, 4) xyxy pixel boxes of the same objects.
        rng: picks which related pair(s) to describe when there are several; None takes them in order.
        max_relations: number of related pairs described (each gives two captions).

    Returns:
        ``(captions, alignment)``: at least five distinct captions (seven when a relation is stated), and per
        caption one object index or -1 per whitespace token.
    """
    if len(objects) == 0:
        raise ValueError("describe_scene needs at least one object")
    if len(boxes) != len(objects):
        raise ValueError(f"describe_scene got {len(objects)} objects but {len(boxes)} boxes")
    boxes = np.asarray(boxes, dtype=np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2) x, y
    order = sorted(range(len(objects)), key=lambda i: (centres[i, 0], centres[i, 1], i))  # left to right
    token_lists = [
        _join([_noun_phrase(objects[i], i, ("size", "colour")) for i in order]),
        _join([_noun_phrase(objects[i], i, ("colour",)) for i in order]),
        _join([_noun_phrase(objects[i], i, ("size",)) for i in order]),
        _count_phrases(objects, order),
        _property_phrases(objects, order),
        *_relation_captions(objects, boxes, order, rng, max_relations),
    ]
    captions = [" ".join(word for word, _ in tokens) for tokens in token_lists]
    alignment = [[index for _, index in tokens] for tokens in token_lists]
    return captions, alignment
