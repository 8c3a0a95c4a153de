"""Attention correctness for captions: does the model look at the object a word names?

For every word that refers to one object of the image, the word's attention map (on the feature grid) is
up-sampled bilinearly to the image, renormalised to sum to one, and the mass inside that object's mask is
taken. The score is the mean of that mass over all aligned words of all images. A map that ignores the image
(uniform) scores the object's area fraction, reported beside it as ``uniform_correctness``.

Two ways to tie words to objects:

- **teacher forcing** (the cleanest measure): the model reads a reference caption and the caption's own
  alignment (per word: object index or -1) says which object each word names; :meth:`update_aligned`.
- **generated captions**: a generated word is tied to object ``k`` when, in this image's reference
  captions, *every* occurrence of that word is aligned to object ``k`` (:func:`word_objects`). Words never
  aligned (articles, relations), words aligned to several objects (two blue objects make "blue" ambiguous)
  and words that are sometimes unaligned (the count word "two" next to a digit two) are not scored.
  Content words outside the references (a wrong colour) are not scored either: correctness measures where
  the model looks while naming an object, not whether the name is right (BLEU and CIDEr-D judge that).

Step indexing: a captioner's step ``t`` attention is the map it used to emit word ``t`` (the word after
``<start>`` is step 0), so a caption's ``t``-th word and the ``t``-th map go together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from visattn.metrics.localisation import upsample_maps

__all__ = ["word_objects", "align_words", "mass_in_masks", "AttentionCorrectness"]


def word_objects(captions: Sequence[str], alignment: Sequence[Sequence[int]]) -> dict[str, int]:
    """Words that name exactly one object in an image, by the references' alignment.

    Args:
        captions: the image's reference captions, words separated by whitespace.
        alignment: per caption, per whitespace token, the object index the token names or -1.

    Returns:
        word -> object index, for words whose every occurrence is aligned to the same object.

    Raises:
        ValueError: a caption and its alignment differ in length (naming the caption).
    """
    if len(captions) != len(alignment):
        raise ValueError(f"attention correctness: {len(captions)} captions but {len(alignment)} alignments")
    seen: dict[str, set[int]] = {}
    for caption, indices in zip(captions, alignment):
        words = caption.split()
        if len(words) != len(indices):
            raise ValueError(f"attention correctness: caption {caption!r} has {len(words)} words but its "
                             f"alignment has {len(indices)} entries")
        for word, index in zip(words, indices):
            seen.setdefault(word, set()).add(int(index))
    return {word: next(iter(objs)) for word, objs in seen.items() if len(objs) == 1 and min(objs) >= 0}


def align_words(words: Sequence[str], captions: Sequence[str], alignment: Sequence[Sequence[int]]) -> list[int]:
    """Object index (or -1) of each generated word, by the rule of :func:`word_objects`."""
    table = word_objects(captions, alignment)
    return [table.get(word, -1) for word in words]


def mass_in_masks(attention: Tensor, masks: Tensor) -> Tensor:
    """Share of each up-sampled, renormalised map that falls inside its mask.

    Args:
        attention: (T, h, w) non-negative maps on the feature grid.
        masks: (T, H, W) bool object masks at image resolution, one per map.

    Returns:
        (T,) float in [0, 1].
    """
    if attention.dim() != 3 or masks.dim() != 3 or len(attention) != len(masks):
        raise ValueError(f"mass_in_masks: expected attention (T, h, w) and masks (T, H, W), got "
                         f"{tuple(attention.shape)} and {tuple(masks.shape)}")
    up = upsample_maps(attention.float(), tuple(masks.shape[-2:]))  # (T, H, W), each sums to 1
    return (up * masks.to(up.device, up.dtype)).sum(dim=(-2, -1))


class AttentionCorrectness:
    """Accumulates attention correctness and its uniform baseline over words and images.

    ``compute()`` gives ``attention_correctness`` (mean mass on the named object over scored words),
    ``uniform_correctness`` (mean area fraction of the same objects) and ``aligned_words`` (how many words
    were scored); both means are 0.0 when no word was scored.
    """

    def __init__(self) -> None:
        self.mass = 0.0
        self.uniform = 0.0
        self.count = 0

    def update_aligned(self, attention: Tensor, objects: Sequence[int], masks: Tensor) -> None:
        """Score words whose objects are known.

        Args:
            attention: (T, h, w) maps, step ``t`` belonging to word ``t``; extra steps are ignored.
            objects: per word, the object index it names or -1 (not scored); at most T entries.
            masks: (N, H, W) bool masks of the image's N objects.
        """
        if len(objects) > len(attention):
            raise ValueError(f"attention correctness: {len(objects)} words but only {len(attention)} maps")
        steps = [t for t, k in enumerate(objects) if k >= 0]
        if not steps:
            return
        targets = [int(objects[t]) for t in steps]
        if max(targets) >= len(masks):
            raise ValueError(f"attention correctness: word aligned to object {max(targets)} but the image has "
                             f"{len(masks)} masks")
        chosen = masks[torch.tensor(targets)]  # (n, H, W)
        mass = mass_in_masks(attention[torch.tensor(steps)], chosen)
        self.mass += float(mass.sum())
        self.uniform += float(chosen.float().mean(dim=(-2, -1)).sum())
        self.count += len(steps)

    def update_generated(self, attention: Tensor, words: Sequence[str], captions: Sequence[str],
                         alignment: Sequence[Sequence[int]], masks: Tensor) -> None:
        """Score a generated caption: words tied to objects through the references (module docstring)."""
        self.update_aligned(attention, align_words(words, captions, alignment), masks)

    def merge(self, other: AttentionCorrectness) -> AttentionCorrectness:
        """Both meters' sums in this one (e.g. the shares of several processes); returns self."""
        self.mass += other.mass
        self.uniform += other.uniform
        self.count += other.count
        return self

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"attention_correctness": self.mass / n, "uniform_correctness": self.uniform / n,
                "aligned_words": float(self.count)}
