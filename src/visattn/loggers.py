"""Where a training run's numbers and figures go: one small interface, two loggers.

The engine talks to a :class:`Logger` only:

    loggers = make_loggers(run_dir, tensorboard=True, main=dist.is_main(), history=resumed_history)
    loggers.log_step(step, {"loss": loss, "lr": lr})           # every ``log_every`` optimizer steps
    loggers.log_epoch(epoch, record)                           # one flat record per epoch (train_*, val_*, ...)
    loggers.log_figure("attention", figure, epoch)             # after each evaluation, if anyone takes figures
    loggers.close()

- :class:`JsonlLogger` writes what a run folder has always held: ``metrics.jsonl`` (one JSON line per epoch)
  and ``curves.png`` (losses, metrics and learning rate per epoch, redrawn each epoch). It ignores steps and
  figures.
- :class:`TensorBoardLogger` writes an event file under ``<run_dir>/tensorboard``: step scalars as
  ``step/<name>`` against the global step, epoch scalars as ``epoch/<name>`` against the epoch, and figures as
  images. It needs the optional ``tensorboard`` package (``pip install 'visattn[tensorboard]'``).

Under torchrun only rank 0 logs: ``make_loggers(..., main=False)`` returns a group that does nothing.
A new destination (Weights & Biases, CSV, ...) is one class with these four methods and ``takes_figures``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from visattn.tasks.base import Task

__all__ = ["Logger", "LoggerGroup", "JsonlLogger", "TensorBoardLogger", "make_loggers", "attention_figure"]

FigureLike = Union["Figure", Image.Image, bytes, str, os.PathLike]


class Logger(Protocol):
    """What the engine calls. ``takes_figures`` says whether :meth:`log_figure` keeps anything, so that the
    caller draws a figure only when someone will look at it."""

    takes_figures: bool

    def log_step(self, step: int, scalars: Mapping[str, float | Tensor]) -> None:
        """Scalars of one optimizer step (tensors are read only by loggers that keep steps)."""

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        """The record of epoch ``epoch`` (1-based): numbers by name; non-numbers are kept where possible."""

    def log_figure(self, tag: str, figure: FigureLike, step: int) -> None:
        """A matplotlib figure, a PIL image, PNG bytes or the path of an image file."""

    def close(self) -> None:
        """Flush and release files."""


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (bools and non-numbers left out; nested dicts as ``outer/inner``)."""
    numbers: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            numbers.update({f"{key}/{k}": v for k, v in _scalars(value).items()})
        elif isinstance(value, Tensor) and value.numel() == 1:
            numbers[key] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[key] = float(value)
    return numbers


def _to_array(figure: FigureLike) -> np.ndarray:
    """Any :data:`FigureLike` -> uint8 RGB array (H, W, 3)."""
    if isinstance(figure, (str, os.PathLike)):
        with Image.open(figure) as picture:
            return np.asarray(picture.convert("RGB"))
    if isinstance(figure, bytes):
        with Image.open(io.BytesIO(figure)) as picture:
            return np.asarray(picture.convert("RGB"))
    if isinstance(figure, Image.Image):
        return np.asarray(figure.convert("RGB"))
    if hasattr(figure, "savefig"):  # a matplotlib Figure, rendered headless without pyplot
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=figure.dpi)
        return _to_array(buffer.getvalue())
    raise ValueError(f"log_figure takes a matplotlib figure, a PIL image, PNG bytes or a path, "
                     f"got {type(figure).__name__}")


class JsonlLogger:
    """``metrics.jsonl`` (appended, one JSON line per epoch) and ``curves.png`` (redrawn each epoch).

    Args:
        run_dir: the run folder (must exist).
        history: records of earlier epochs (a resumed run), so the curves cover the whole run.
    """

    takes_figures = False

    def __init__(self, run_dir: str | os.PathLike, *, history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.history = [dict(record) for record in history]

    def log_step(self, step: int, scalars: Mapping[str, float | Tensor]) -> None:
        pass  # the file holds epochs

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        from visattn.viz import training_curves  # matplotlib is imported only when a figure is drawn

        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(dict(record)) + "\n")
        self.history.append(dict(record))
        training_curves(self.history, self.run_dir / "curves.png")

    def log_figure(self, tag: str, figure: FigureLike, step: int) -> None:
        pass  # figures go to the loggers that take them

    def close(self) -> None:
        pass  # every write is complete when log_epoch returns


class TensorBoardLogger:
    """Scalars per step and per epoch, and figures, in a TensorBoard event file.

    Args:
        log_dir: folder of the event file (``<run_dir>/tensorboard`` from :func:`make_loggers`).

    Raises:
        ImportError: the ``tensorboard`` package is not installed (the message says how to install it).
    """

    takes_figures = True

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoard logging needs the tensorboard package: "
                              "pip install 'visattn[tensorboard]' (or pip install tensorboard)") from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_step(self, step: int, scalars: Mapping[str, float | Tensor]) -> None:
        for name, value in _scalars(scalars).items():
            self.writer.add_scalar(f"step/{name}", value, step)

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        for name, value in _scalars(record).items():
            if name != "epoch":
                self.writer.add_scalar(f"epoch/{name}", value if math.isfinite(value) else math.nan, epoch)
        self.writer.flush()

    def log_figure(self, tag: str, figure: FigureLike, step: int) -> None:
        self.writer.add_image(tag, _to_array(figure), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class LoggerGroup:
    """Several loggers behind one :class:`Logger` (none: every call does nothing)."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)

    @property
    def takes_figures(self) -> bool:
        return any(logger.takes_figures for logger in self.loggers)

    def log_step(self, step: int, scalars: Mapping[str, float | Tensor]) -> None:
        for logger in self.loggers:
            logger.log_step(step, scalars)

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(epoch, record)

    def log_figure(self, tag: str, figure: FigureLike, step: int) -> None:
        for logger in self.loggers:
            if logger.takes_figures:
                logger.log_figure(tag, figure, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_loggers(run_dir: str | os.PathLike, *, tensorboard: bool = False, main: bool = True,
                 history: Iterable[Mapping[str, Any]] = ()) -> LoggerGroup:
    """The loggers of a run: always :class:`JsonlLogger`, plus :class:`TensorBoardLogger` when asked.

    Args:
        run_dir: the run folder (created).
        tensorboard: also write TensorBoard events to ``run_dir/tensorboard``.
        main: False on the processes that must not write (torchrun ranks other than 0): an empty group.
        history: earlier epochs' records of a resumed run.
    """
    if not main:
        return LoggerGroup()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [JsonlLogger(run_dir, history=history)]
    if tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return LoggerGroup(loggers)


@torch.inference_mode()
def attention_figure(task: Task, model: nn.Module, dataset: Any, device: torch.device, *,
                     num_images: int = 4) -> Figure | None:
    """The attention figure logged after an evaluation: the first images of ``dataset`` with the model's
    predictions and their attention maps (:func:`visattn.viz.results_figure`).

    Returns:
        The figure, or None when the data holds no images (e.g. a feature cache) or is empty.
    """
    from visattn.viz import results_figure  # matplotlib only when drawing

    count = min(num_images, len(dataset))
    if count == 0:
        return None
    samples = [dataset[i] for i in range(count)]
    batch = task.collate(samples)
    images = batch.get("images")
    if not isinstance(images, Tensor):
        return None
    was_training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # drawing must not move the training's random streams
            sizes = [tuple(images.shape[-2:])] * len(images)
            sources = [str(sample.get("image_id", i)) for i, sample in enumerate(samples)]
            results = task.predict(model, images.to(device), sizes, sources)
    finally:
        model.train(was_training)
    return results_figure(images, results)
