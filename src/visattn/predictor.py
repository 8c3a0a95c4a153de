"""One way in: a checkpoint in, typed predictions with their attention maps out.

::

    predictor = visattn.Predictor.from_checkpoint("runs/demo/run/best.safetensors", device="auto")
    [result] = predictor.predict("photo.png", beam_size=5, n_best=3)
    result.caption, result.words, result.attention        # the best caption, its words, one map per word
    result.to_dict()                                       # JSON: maps as nested lists at grid resolution

The task is read from the checkpoint. Images (paths, PIL images or tensors) are converted to RGB, resized to
the side the model was trained at, batched, and run under ``torch.inference_mode`` on the predictor's device;
the task (:meth:`visattn.tasks.base.Task.predict`) turns the model's outputs into
:mod:`visattn.results`. The CLI's ``predict``, ``caption`` and ``detect``, the server and the benchmarks all
come through here, and the exported runtime (``visattn.runtime``) returns the same fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from visattn.checkpoint import CheckpointError, read_checkpoint
from visattn.data.images import image_to_tensor, load_image, to_rgb
from visattn.engine import select_device
from visattn.models import model_from_checkpoint
from visattn.results import Result
from visattn.tasks.base import Task, get_task

__all__ = ["Predictor", "Prepared", "ImageInput"]

ImageInput = Union[str, os.PathLike, Image.Image, Tensor]


@dataclass
class Prepared:
    """Images ready for the model.

    Attributes:
        images: (B, 3, S, S) float32 in [0, 1] at the model's side S (on the CPU).
        sizes: the original (H, W) of each image.
        sources: a name per image: the file path, or ``<image i>`` for one passed in memory.
    """

    images: Tensor
    sizes: list[tuple[int, int]]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sources)


def _as_list(images: ImageInput | Sequence[ImageInput] | Prepared) -> list[Any]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, Tensor):
        if images.dim() == 3:
            return [images]
        if images.dim() == 4:
            return list(images.unbind(0))
        raise ValueError(f"an image tensor must be (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        return list(images)
    raise ValueError(f"images must be a path, a PIL image, a tensor or a list of them, got {type(images).__name__}")


def _tensor_image(image: Tensor, size: int, name: str) -> Tensor:
    """(3, H, W) uint8 in [0, 255] or float in [0, 1] -> (3, S, S) float32, resized like the data loaders."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{name}: expected an RGB image tensor of shape (3, H, W), got {tuple(image.shape)}")
    image = image.detach().cpu()
    image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
    if tuple(image.shape[-2:]) != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp_(0, 1)  # (1, 3, H, W) -> (3, S, S)
    return image


class Predictor:
    """A loaded model of any task with one ``predict``.

    Args:
        model: a registered model with ``config.image_size``.
        task: its :class:`~visattn.tasks.base.Task` (or the task's name).
        model_name: its registry name.
        device: where it runs.
        checkpoint: the file it came from (for :meth:`info`).
        training: the checkpoint's training record (epoch, best metric), if any.
        image_size: resize images to this side instead of the training side ``model.config.image_size``
            (a convolutional encoder then gives a larger or smaller grid).
    """

    def __init__(self, model: nn.Module, *, task: Task | str, model_name: str, device: torch.device | str = "cpu",
                 checkpoint: str | os.PathLike | None = None, training: dict[str, Any] | None = None,
                 image_size: int | None = None) -> None:
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size < 1):
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        self._image_size = image_size
        self.task = get_task(task) if isinstance(task, str) else task
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_name = model_name
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.training = dict(training or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        task: str | None = None, image_size: int | None = None) -> Predictor:
        """Rebuild the model of ``path`` and wrap it.

        Args:
            path: a ``.safetensors`` checkpoint written by visattn.
            device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps" or a torch.device.
            task: when given, refuse a checkpoint of another task.
            image_size: resize to this side instead of the checkpoint's training side.

        Raises:
            CheckpointError: a missing, corrupt or other-task checkpoint, naming the file.
        """
        checkpoint = read_checkpoint(path, task=task)
        try:
            task_object = get_task(checkpoint.task)
        except ValueError as err:
            raise CheckpointError(f"{checkpoint.path}: {err}") from err
        target = device if isinstance(device, torch.device) else select_device(device)
        model = model_from_checkpoint(checkpoint, map_location=str(target))
        training = {k: checkpoint.training[k] for k in ("epoch", "step", "best") if k in checkpoint.training}
        return cls(model, task=task_object, model_name=checkpoint.model, device=target, checkpoint=checkpoint.path,
                   training=training, image_size=image_size)

    @property
    def image_size(self) -> int:
        """The square side every image is resized to: the training side unless overridden."""
        return self._image_size or int(self.model.config.image_size)

    @property
    def name(self) -> str:
        """A short name: the checkpoint's run folder and file stem, or the model name."""
        if self.checkpoint is None:
            return self.model_name
        path = Path(self.checkpoint)
        return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem

    def info(self) -> dict[str, Any]:
        """A JSON-able description: name, task, model, image size, grid, classes or vocabulary size."""
        config = self.model.config
        grid = self.model.encoder.grid_size(self.image_size, self.image_size) if hasattr(self.model, "encoder") \
            and hasattr(self.model.encoder, "grid_size") else None
        info: dict[str, Any] = {"name": self.name, "task": self.task.name, "model": self.model_name,
                                "image_size": self.image_size, "grid": list(grid) if grid else None,
                                "device": str(self.device), "checkpoint": self.checkpoint,
                                "options": dict(self.task.predict_options)}
        if getattr(config, "class_names", None):
            info["class_names"] = list(config.class_names)
        if getattr(config, "vocab", None):
            info["vocab_size"] = len(config.vocab)
        if self.training:
            info["training"] = self.training
        return info

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> Prepared:
        """Load, convert to RGB and resize every image (files are read completely before any model work).

        Raises:
            ImageLoadError: a missing, empty, truncated or oversized file, naming it.
            ValueError: a tensor that is not (3, H, W) / (B, 3, H, W), or an unsupported input type.
        """
        items = _as_list(images)
        if not items:
            raise ValueError("predict: no images given")
        size = self.image_size
        tensors, sizes, sources = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                picture = load_image(item)
                tensors.append(image_to_tensor(picture, size=size))
                sizes.append((picture.height, picture.width))
                sources.append(str(item))
            elif isinstance(item, Image.Image):
                picture = to_rgb(item, source=f"<image {i}>")
                tensors.append(image_to_tensor(picture, size=size))
                sizes.append((picture.height, picture.width))
                sources.append(f"<image {i}>")
            elif isinstance(item, Tensor):
                tensors.append(_tensor_image(item, size, f"<image {i}>"))
                sizes.append((int(item.shape[-2]), int(item.shape[-1])))
                sources.append(f"<image {i}>")
            else:
                raise ValueError(f"<image {i}>: expected a path, a PIL image or a tensor, got {type(item).__name__}")
        return Prepared(torch.stack(tensors), sizes, sources)  # (B, 3, S, S)

    def predict(self, images: ImageInput | Sequence[ImageInput] | Prepared, *, batch_size: int = 16,
                **options: Any) -> list[Result]:
        """Predict every image; a list in, a list out (one result per image, in order).

        Args:
            images: a path, PIL image or tensor, a list of them, or :meth:`preprocess`'s output.
            batch_size: images run through the model together.
            **options: the task's options (``predictor.task.predict_options``): classify ``top_k``; caption
                ``beam_size``, ``n_best``, ``max_len``, ``length_penalty``; detect ``score_threshold``, ``top_k``.

        Raises:
            ValueError: an unknown or invalid option (naming it), or bad input (see :meth:`preprocess`).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        options = self.task.check_predict_options(options)
        prepared = images if isinstance(images, Prepared) else self.preprocess(images)
        results: list[Result] = []
        with torch.inference_mode():
            for start in range(0, len(prepared), batch_size):
                stop = start + batch_size
                batch = prepared.images[start:stop].to(self.device, non_blocking=True)
                results += self.task.predict(self.model, batch, prepared.sizes[start:stop],
                                             prepared.sources[start:stop], **options)
        return results

    def __repr__(self) -> str:
        return f"Predictor(task={self.task.name!r}, model={self.model_name!r}, device={str(self.device)!r})"
