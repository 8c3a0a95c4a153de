"""``OnnxPredictor``: an exported folder in, the Predictor's results out, with numpy, Pillow and ONNX Runtime.

    predictor = OnnxPredictor("exported/cap")                 # written by `visattn export --format onnx`
    [result] = predictor.predict("photo.png", beam_size=3)
    result.caption, result.to_dict()                          # the fields of visattn.Predictor's results

Images go through the Predictor's preprocessing: files are read completely with
:func:`visattn.data.images.load_image` and converted to RGB, then resized to the export's side with Pillow's
bilinear filter and scaled to [0, 1] (the same bytes as :func:`visattn.data.images.image_to_tensor`).
Arrays (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1], are used as they are at the model's size; other
sizes are resized with Pillow (the Predictor uses PyTorch's antialiased interpolation there, which differs
by rounding). The normalisation runs inside the graphs. Each task's options and their checks are the
Predictor's; captions come from :mod:`visattn.runtime.search`, detections from the post-processing of
:meth:`visattn.heads.detector.Detector.postprocess`, in numpy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image

from visattn.data.images import load_image, to_rgb
from visattn.results import CaptionHypothesis, CaptionResult, ClassifyResult, DetectResult, Result
from visattn.runtime.search import beam_search, check_decoding_args, greedy_search, topk

__all__ = ["OnnxPredictor", "ExportFolderError", "PreparedArrays", "read_export", "EXPORT_FORMAT", "EXPORT_VERSION",
           "PREDICT_OPTIONS"]

EXPORT_FORMAT = "visattn-export"  # as visattn.export writes (that module needs torch, so it is not imported)
EXPORT_VERSION = 1
#: The graphs each task needs, and each task's predict options with their defaults (the Predictor's).
TASK_GRAPHS = {"classify": ("classifier",), "detect": ("detector",), "caption": ("encoder", "step")}
PREDICT_OPTIONS: dict[str, dict[str, Any]] = {
    "classify": {"top_k": 5},
    "caption": {"beam_size": 3, "n_best": 1, "max_len": None, "length_penalty": 0.0},
    "detect": {"score_threshold": 0.5, "top_k": 100},
}
ArrayInput = Union[str, os.PathLike, Image.Image, np.ndarray]


class ExportFolderError(ValueError):
    """An export folder that is incomplete, of another version or format, or unreadable; names the file."""


def read_export(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``folder/visattn.json`` and that every graph it lists is there.

    Raises:
        ExportFolderError: no folder or no visattn.json, invalid JSON, another format or version, not ONNX,
            an unknown task, or a missing graph file; the message names the file.
    """
    folder = Path(folder)
    meta_path = folder / "visattn.json"
    if not meta_path.is_file():
        raise ExportFolderError(f"{meta_path}: not found (not a folder written by `visattn export`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportFolderError(f"{meta_path}: not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ExportFolderError(f"{meta_path}: not a visattn export description (format "
                                f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != EXPORT_VERSION:
        raise ExportFolderError(f"{meta_path}: export version {meta.get('version')!r}; this runtime reads version "
                                f"{EXPORT_VERSION} (export the checkpoint again with this visattn)")
    if meta.get("graph_format") != "onnx":
        raise ExportFolderError(f"{meta_path}: holds {meta.get('graph_format')!r} graphs; OnnxPredictor runs ONNX "
                                f"(visattn export --format onnx)")
    task = meta.get("task")
    if task not in TASK_GRAPHS:
        raise ExportFolderError(f"{meta_path}: unknown task {task!r}; valid: {', '.join(TASK_GRAPHS)}")
    graphs = meta.get("graphs") or {}
    for name in TASK_GRAPHS[task]:
        if name not in graphs or "file" not in graphs[name]:
            raise ExportFolderError(f"{meta_path}: lists no {name!r} graph, which a {task} export needs")
        path = folder / graphs[name]["file"]
        if not path.is_file():
            raise ExportFolderError(f"{path}: missing {name!r} graph of this export")
    return meta


@dataclass
class PreparedArrays:
    """Images ready for the graphs: ``images`` (B, 3, S, S) float32 in [0, 1], original ``sizes`` (H, W),
    and ``sources`` (file path or ``<image i>``)."""

    images: np.ndarray
    sizes: list[tuple[int, int]]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sources)


def _pil_to_array(picture: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> (3, S, S) float32 in [0, 1], resized as image_to_tensor does."""
    if picture.size != (size, size):
        picture = picture.resize((size, size), resample=Image.Resampling.BILINEAR)
    array = np.asarray(picture, dtype=np.uint8)  # (S, S, 3)
    return np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)  # (3, S, S)


def _array_image(image: np.ndarray, size: int, name: str) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] -> (3, S, S) float32."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{name}: expected an RGB image array of shape (3, H, W), got {tuple(image.shape)}")
    image = image.astype(np.float32) / np.float32(255.0) if image.dtype == np.uint8 else image.astype(np.float32)
    if image.shape[1:] != (size, size):
        channels = [np.asarray(Image.fromarray(np.ascontiguousarray(channel)).resize(  # float32 -> mode "F"
            (size, size), Image.Resampling.BILINEAR)) for channel in image]  # (H, W) each -> (S, S)
        image = np.clip(np.stack(channels), 0.0, 1.0)
    return image


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"an image array must be (3, H, W) or (B, 3, H, W), got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        return list(images)
    raise ValueError(f"images must be a path, a PIL image, an array or a list of them, got {type(images).__name__}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class OnnxPredictor:
    """An exported model of any task with the Predictor's ``predict`` (module docstring).

    Args:
        folder: written by ``visattn export --format onnx``.
        threads: ONNX Runtime intra-op threads (None: its default, one per core).
        spinning: let idle worker threads spin for the next call (ONNX Runtime's default, lowest latency);
            False frees their cores between calls, for machines shared with other work.

    Raises:
        ExportFolderError: see :func:`read_export`; also a graph ONNX Runtime cannot load.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.meta = read_export(self.folder)
        self.task: str = self.meta["task"]
        self.model_name: str = self.meta["model"]
        self.image_size = int(self.meta["image_size"])
        self.grid = tuple(int(v) for v in self.meta["grid"])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for name in TASK_GRAPHS[self.task]:
            path = self.folder / self.meta["graphs"][name]["file"]
            try:
                self.sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own exception types
                raise ExportFolderError(f"{path}: ONNX Runtime cannot load this graph: {err}") from None

    def info(self) -> dict[str, Any]:
        """A JSON-able description, with the Predictor's keys where they apply."""
        info: dict[str, Any] = {"name": self.folder.name, "task": self.task, "model": self.meta["model"],
                                "image_size": self.image_size, "grid": list(self.grid), "device": "onnxruntime-cpu",
                                "checkpoint": self.meta["checkpoint"]["file"],
                                "options": dict(PREDICT_OPTIONS[self.task])}
        if "class_names" in self.meta:
            info["class_names"] = list(self.meta["class_names"])
        if "vocab" in self.meta:
            info["vocab_size"] = len(self.meta["vocab"])
        return info

    def preprocess(self, images: ArrayInput | Sequence[ArrayInput]) -> PreparedArrays:
        """Load, convert to RGB and resize every image (module docstring).

        Raises:
            ImageLoadError: a missing, empty, truncated or oversized file, naming it.
            ValueError: an array that is not (3, H, W) / (B, 3, H, W), or an unsupported input type.
        """
        items = _as_list(images)
        if not items:
            raise ValueError("predict: no images given")
        arrays, sizes, sources = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                picture = load_image(item)
                arrays.append(_pil_to_array(picture, self.image_size))
                sizes.append((picture.height, picture.width))
                sources.append(str(item))
            elif isinstance(item, Image.Image):
                picture = to_rgb(item, source=f"<image {i}>")
                arrays.append(_pil_to_array(picture, self.image_size))
                sizes.append((picture.height, picture.width))
                sources.append(f"<image {i}>")
            elif isinstance(item, np.ndarray):
                arrays.append(_array_image(item, self.image_size, f"<image {i}>"))
                sizes.append((int(item.shape[-2]), int(item.shape[-1])))
                sources.append(f"<image {i}>")
            else:
                raise ValueError(f"<image {i}>: expected a path, a PIL image or an array, got {type(item).__name__}")
        return PreparedArrays(np.stack(arrays), sizes, sources)  # (B, 3, S, S)

    def predict(self, images: ArrayInput | Sequence[ArrayInput] | PreparedArrays, *, batch_size: int = 16,
                **options: Any) -> list[Result]:
        """Predict every image; one result per image, in order. Options as ``visattn.Predictor.predict``.

        Raises:
            ValueError: an unknown or invalid option (naming it), or bad input (see :meth:`preprocess`).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        valid = PREDICT_OPTIONS[self.task]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for a {self.task} model; "
                             f"valid: {', '.join(valid)}")
        options = {**valid, **options}
        run = {"classify": self._classify, "caption": self._caption, "detect": self._detect}[self.task]
        self._check_options(options)
        prepared = images if isinstance(images, PreparedArrays) else self.preprocess(images)
        results: list[Result] = []
        for start in range(0, len(prepared), batch_size):
            stop = start + batch_size
            results += run(np.ascontiguousarray(prepared.images[start:stop]), prepared.sizes[start:stop],
                           prepared.sources[start:stop], **options)
        return results

    def _check_options(self, options: dict[str, Any]) -> None:
        top_k = options.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        if self.task == "detect":
            threshold = options["score_threshold"]
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"score_threshold must be a number in [0, 1], got {threshold!r}")
        if self.task == "caption":
            max_len = self.meta["max_len"] if options["max_len"] is None else options["max_len"]
            check_decoding_args(beam_size=options["beam_size"], max_len=max_len, n_best=options["n_best"],
                                length_penalty=options["length_penalty"])

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[name].run(None, feeds)

    def _classify(self, images: np.ndarray, sizes: list, sources: list, *, top_k: int) -> list[ClassifyResult]:
        logits, attention = self._run("classifier", {"images": images})  # (B, K), (B, G, H', W')
        probs = _softmax(logits.astype(np.float32))
        values, indices = topk(probs, min(top_k, probs.shape[-1]))  # (B, k) each
        names = self.meta["class_names"]
        results = []
        for i, source in enumerate(sources):
            top = [(names[j], float(v)) for v, j in zip(values[i].tolist(), indices[i].tolist())]
            results.append(ClassifyResult(source=str(source), label=top[0][0], score=top[0][1], top_k=top,
                                          attention=attention[i].astype(np.float32), image_size=tuple(sizes[i])))
        return results

    def _caption(self, images: np.ndarray, sizes: list, sources: list, *, beam_size: int, n_best: int,
                 max_len: int | None, length_penalty: float) -> list[CaptionResult]:
        keys, values, h, c = self._run("encoder", {"images": images})  # keys/values (B, ...), h/c (B, D)
        batch = images.shape[0]

        def step(prev: np.ndarray, state: tuple[np.ndarray, ...]):
            log_probs, alpha, h_out, c_out = self._run("step", {"prev_tokens": prev, "h": state[0], "c": state[1],
                                                                "keys": keys, "values": values})
            return log_probs, alpha, (h_out, c_out)

        ids = self.meta["special_ids"]
        options = dict(start_id=ids["start"], end_id=ids["end"], length_penalty=float(length_penalty),
                       max_len=self.meta["max_len"] if max_len is None else max_len)
        if beam_size == 1:
            hypotheses = greedy_search(step, (h[:, None], c[:, None]), batch_size=batch, **options)  # (B, 1, D)
        else:
            state = (np.repeat(h[:, None], beam_size, axis=1), np.repeat(c[:, None], beam_size, axis=1))  # (B, k, D)
            hypotheses = beam_search(step, state, batch_size=batch, beam_size=beam_size, n_best=n_best, **options)
        vocab = self.meta["vocab"]
        results = []
        for source, size, hyps in zip(sources, sizes, hypotheses):
            captions = []
            for hyp in hyps:
                words = [vocab[t] for t in hyp.tokens]
                scores = [float(v) for v in hyp.token_logprobs]
                maps = hyp.attention[: len(words)].reshape(len(words), *self.grid).astype(np.float32)
                captions.append(CaptionHypothesis(
                    text=" ".join(w for w in words if not (w.startswith("<") and w.endswith(">"))), words=words,
                    word_scores=scores[: len(words)],
                    end_score=scores[len(words)] if hyp.finished and len(scores) > len(words) else None,
                    score=float(hyp.score), attention=maps, finished=hyp.finished))
            results.append(CaptionResult(source=str(source), captions=captions, image_size=tuple(size), grid=self.grid))
        return results

    def _detect(self, images: np.ndarray, sizes: list, sources: list, *, score_threshold: float,
                top_k: int) -> list[DetectResult]:
        logits, boxes, attention = self._run("detector", {"images": images})  # (B, Q, K+1), (B, Q, 4), (B, Q, H', W')
        prob = _softmax(logits.astype(np.float32))[..., :-1]  # (B, Q, K): "no object" dropped
        scores, labels = prob.max(axis=-1), prob.argmax(axis=-1)  # (B, Q) each
        hw = np.asarray(sizes, dtype=np.float32).reshape(-1, 2)  # (B, 2) original (H, W)
        scale = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=-1)[:, None, :]  # (B, 1, 4): (W, H, W, H)
        cx, cy, w, h = np.moveaxis(boxes.astype(np.float32), -1, 0)  # (B, Q) each
        xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1) * scale  # (B, Q, 4)
        xyxy = np.minimum(np.maximum(xyxy, np.float32(0.0)), scale)  # clipped to the image
        names = self.meta["class_names"]
        results = []
        for b, source in enumerate(sources):
            keep = np.flatnonzero(scores[b] >= score_threshold)
            keep = keep[np.argsort(-scores[b, keep], kind="stable")][:top_k].astype(np.int64)
            results.append(DetectResult(source=str(source), boxes=xyxy[b, keep], scores=scores[b, keep],
                                        labels=[names[i] for i in labels[b, keep].tolist()],
                                        label_ids=labels[b, keep].astype(np.int64), query_index=keep,
                                        attention=attention[b, keep].astype(np.float32), image_size=tuple(sizes[b])))
        return results

    def __repr__(self) -> str:
        return f"OnnxPredictor(task={self.task!r}, folder={str(self.folder)!r})"
