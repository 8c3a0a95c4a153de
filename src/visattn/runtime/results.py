"""The runtime's results: :mod:`visattn.results` field for field, with numpy arrays where those hold tensors.

PyTorch may be absent where the runtime runs, so these are separate dataclasses with the same names,
fields, properties and :meth:`to_dict` output as the Predictor's (a test compares the two on every task).
Maps are float32 arrays at grid resolution (H', W') that sum to 1 over the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np

__all__ = ["ClassifyResult", "CaptionHypothesis", "CaptionResult", "DetectResult", "Result"]


def _grid(maps: np.ndarray) -> list[int]:
    return [int(maps.shape[-2]), int(maps.shape[-1])]


@dataclass
class ClassifyResult:
    """One image's classification.

    Attributes:
        source: the file, or ``<image i>`` for an image passed in memory.
        label: the most probable class name; ``score`` its probability.
        top_k: ``(class name, probability)`` pairs, best first.
        attention: (G, H', W') float32, one map per glimpse.
        image_size: the original (H, W) in pixels.
    """

    task: ClassVar[str] = "classify"
    source: str
    label: str
    score: float
    top_k: list[tuple[str, float]]
    attention: np.ndarray
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "image_size": list(self.image_size),
                "grid": _grid(self.attention), "label": self.label, "score": self.score,
                "top_k": [{"label": name, "probability": p} for name, p in self.top_k],
                "attention": self.attention.tolist()}


@dataclass
class CaptionHypothesis:
    """One caption of the n-best list.

    Attributes:
        text: the caption, special tokens dropped.
        words: one per decoding step (``<unk>`` kept), so word ``t`` goes with map ``t``.
        word_scores: log-probability of each word (len(words)).
        end_score: log-probability of ``<end>`` (None when the caption was cut at ``max_len``).
        score: the beam's score (sum of log-probabilities over ``length ** length_penalty``).
        attention: (len(words), H', W') float32, one map per word.
        finished: whether the caption ended with ``<end>``.
    """

    text: str
    words: list[str]
    word_scores: list[float]
    end_score: float | None
    score: float
    attention: np.ndarray
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "words": list(self.words), "word_scores": list(self.word_scores),
                "end_score": self.end_score, "score": self.score, "finished": self.finished,
                "attention": self.attention.tolist()}


@dataclass
class CaptionResult:
    """One image's captions: the n-best list, best first (``caption``, ``words`` and ``attention`` are the
    best one's)."""

    task: ClassVar[str] = "caption"
    source: str
    captions: list[CaptionHypothesis]
    image_size: tuple[int, int]
    grid: tuple[int, int]

    @property
    def caption(self) -> str:
        return self.captions[0].text

    @property
    def words(self) -> list[str]:
        return self.captions[0].words

    @property
    def attention(self) -> np.ndarray:
        return self.captions[0].attention

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "image_size": list(self.image_size),
                "grid": list(self.grid), "captions": [c.to_dict() for c in self.captions]}


@dataclass
class DetectResult:
    """One image's detections, best score first.

    Attributes:
        boxes: (D, 4) float32 xyxy in pixels of the original image.
        scores: (D,) float32 best object-class probability of each kept query.
        labels: D class names; ``label_ids`` (D,) int64 their indices.
        query_index: (D,) int64, which learned query made each detection.
        attention: (D, H', W') float32, each kept query's map.
        image_size: the original (H, W) in pixels.
    """

    task: ClassVar[str] = "detect"
    source: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    label_ids: np.ndarray
    query_index: np.ndarray
    attention: np.ndarray
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "image_size": list(self.image_size),
                "grid": _grid(self.attention),
                "detections": [{"box": box, "score": score, "label": label, "label_id": label_id, "query": query,
                                "attention": maps}
                               for box, score, label, label_id, query, maps in zip(
                                   self.boxes.tolist(), self.scores.tolist(), self.labels, self.label_ids.tolist(),
                                   self.query_index.tolist(), self.attention.tolist())]}


Result = Union[ClassifyResult, CaptionResult, DetectResult]
