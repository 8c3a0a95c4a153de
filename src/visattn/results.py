"""The typed results of a prediction, one per image, shared by every way in.

:class:`visattn.Predictor` returns them; the CLI prints and draws them, the server sends their
:meth:`to_dict`, and the exported runtime (``visattn.runtime``, which has no PyTorch) returns the same classes
holding float32 numpy arrays where the Predictor gives CPU tensors. Every map is at grid resolution (H', W')
and its values sum to 1 over the grid. This module imports no torch.

``to_dict()`` gives plain JSON types: maps as nested lists of floats, plus ``grid`` = [H', W'] and the
``task``, so a browser can draw a map without knowing the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

if TYPE_CHECKING:  # no torch at run time: the runtime without PyTorch fills the same classes with numpy arrays
    from torch import Tensor

__all__ = ["ClassifyResult", "CaptionHypothesis", "CaptionResult", "DetectResult", "Result"]


def _grid(maps: Tensor) -> list[int]:
    return [int(maps.shape[-2]), int(maps.shape[-1])]


@dataclass
class ClassifyResult:
    """One image's classification.

    Attributes:
        source: the file, or ``<image i>`` for an image passed in memory.
        label: the most probable class name; ``score`` its probability.
        top_k: ``(class name, probability)`` pairs, best first.
        attention: (G, H', W'), one map per glimpse (uniform for global average pooling).
        image_size: the original (H, W) in pixels.
    """

    task: ClassVar[str] = "classify"
    source: str
    label: str
    score: float
    top_k: list[tuple[str, float]]
    attention: Tensor
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
        attention: (len(words), H', W'), one map per word.
        finished: whether the caption ended with ``<end>``.
    """

    text: str
    words: list[str]
    word_scores: list[float]
    end_score: float | None
    score: float
    attention: Tensor
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
    def attention(self) -> Tensor:
        return self.captions[0].attention

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "image_size": list(self.image_size),
                "grid": list(self.grid), "captions": [c.to_dict() for c in self.captions]}


@dataclass
class DetectResult:
    """One image's detections, best score first.

    Attributes:
        boxes: (D, 4) xyxy in pixels of the original image.
        scores: (D,) best object-class probability of each kept query.
        labels: D class names; ``label_ids`` (D,) int64 their indices.
        query_index: (D,) int64, which learned query made each detection.
        attention: (D, H', W'), each kept query's map.
        image_size: the original (H, W) in pixels.
    """

    task: ClassVar[str] = "detect"
    source: str
    boxes: Tensor
    scores: Tensor
    labels: list[str]
    label_ids: Tensor
    query_index: Tensor
    attention: Tensor
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
