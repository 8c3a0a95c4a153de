"""Fresh procedural scenes for the page's "try a sample": the kind of image each model was trained on.

A model trained on procedural scenes knows nothing else (it will not caption a holiday photo), so the page
offers a scene drawn by :mod:`visattn.data.scenes` at the model's image size, with what the scene really
holds: reference captions for a captioner, the label for a classifier, boxes and labels for a detector.

Whether a model was trained on such scenes is read from what it predicts: a classifier or detector whose
class names are the scenes' classes, a captioner whose words are all scene-caption words.
"""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any

from visattn.data.scene_captions import VOCABULARY
from visattn.data.scenes import CLASS_NAMES, SceneConfig, make_scene

__all__ = ["SCENE_KINDS", "sample_support", "draw_sample"]

# task -> (scene kind, object count range); captions as the demo trains them (1-3 objects).
SCENE_KINDS: dict[str, tuple[str, tuple[int, int]]] = {
    "classify": ("single", (1, 1)),
    "caption": ("caption", (1, 3)),
    "detect": ("multi", (1, 3)),
}
_SPECIAL_WORDS = {"<pad>", "<start>", "<end>", "<unk>"}
_SCENE_WORDS = set(VOCABULARY) | {"two", "three", "four", "five", "six", "seven", "eight", "nine"}
_MIN_SCENE_SIZE = 32  # smaller scenes cannot hold objects of 8 pixels (SceneConfig refuses them)


def sample_support(task: str, *, class_names: list[str] | None = None, vocab: list[str] | None = None,
                   image_size: int | None = None) -> str | None:
    """Why a model cannot be shown procedural samples, or None when it can.

    Args:
        task: the model's task.
        class_names: a classifier's or detector's classes, in label order.
        vocab: a captioner's vocabulary (special tokens included).
        image_size: the side the model reads images at.
    """
    if task not in SCENE_KINDS:
        return f"no procedural scenes for task {task!r}"
    if image_size is None or image_size < _MIN_SCENE_SIZE:
        return f"its image size {image_size} is below the {_MIN_SCENE_SIZE} pixels a procedural scene needs"
    if task == "caption":
        words = set(vocab or []) - _SPECIAL_WORDS
        unknown = sorted(words - _SCENE_WORDS)
        if not words or unknown:
            return f"its vocabulary is not that of procedural scenes (e.g. {', '.join(unknown[:3]) or 'empty'})"
        return None
    if list(class_names or []) != list(CLASS_NAMES):
        return "its classes are not those of procedural scenes"
    return None


def _png_data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def draw_sample(task: str, *, image_size: int, seed: int | None = None) -> dict[str, Any]:
    """Draw one scene of the kind ``task``'s models train on.

    Args:
        task: "classify", "caption" or "detect".
        image_size: side of the square scene in pixels.
        seed: the scene's seed; None draws a fresh one.

    Returns:
        JSON-able: ``seed``, ``image`` (a PNG data URL), ``image_size`` [H, W], ``kind`` and ``references``:
        ``captions`` (caption), ``label`` (classify), ``boxes`` xyxy pixels + ``labels`` (detect); every task
        also gets ``objects`` (class, colour, size of each object).

    Raises:
        ValueError: an unknown task, or an image size procedural scenes cannot be drawn at.
    """
    if task not in SCENE_KINDS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(SCENE_KINDS)}")
    kind, num_objects = SCENE_KINDS[task]
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    scene = make_scene(SceneConfig(kind=kind, image_size=image_size, num_objects=num_objects), seed, 0)
    objects = [{"class_name": o["class_name"], "colour": o["colour"], "size": o["size"]} for o in scene["objects"]]
    references: dict[str, Any] = {"objects": objects}
    if task == "caption":
        references["captions"] = list(scene["captions"])
    elif task == "classify":
        references["label"] = CLASS_NAMES[scene["label"]]
    else:
        references["boxes"] = scene["boxes"].tolist()
        references["labels"] = [CLASS_NAMES[i] for i in scene["labels"].tolist()]
    return {"seed": seed, "kind": kind, "image": _png_data_url(scene["image"]),
            "image_size": [image_size, image_size], "references": references}
