"""The Task protocol: everything the engine, the Predictor and the CLI need to know about one task.

A task is a small object with the same names for classification, captioning and detection::

    task = get_task("caption", beam_size=3)
    batch = task.collate(samples)                        # list of sample dicts -> batch dict
    terms = task.criterion(model, batch, device)         # named, unweighted loss terms {"loss_ce": ...}
    loss = task.total_loss(terms)                        # Σ weight_dict[k] · terms[k] (DETR's convention)
    metrics = task.evaluate(model, loader, device)       # {"CIDEr-D": ..., ...}; task.monitor picks the best
    results = task.predict(model, images, sizes, sources, beam_size=5)   # typed results (visattn.results)

The engine (:func:`visattn.engine.fit`) knows only this protocol; :class:`visattn.Predictor` calls
:meth:`Task.predict`. A fourth task is one file in ``tasks/`` with a subclass of :class:`Task`, registered
with :func:`register_task`, plus its head in ``heads/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from visattn.engine import TrainConfig
    from visattn.results import Result

__all__ = ["Task", "register_task", "get_task", "list_tasks", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``torch.compile`` and/or DDP wrapper (itself when unwrapped)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # DDP around a compiled model


class Task(ABC):
    """Base class of every task; subclasses set the class attributes and implement the methods.

    Attributes:
        name: the task's name, stored in checkpoints ("classify", "caption", "detect").
        model_name: the registered model this task trains by default.
        monitor: the metric of :meth:`evaluate` that selects the best checkpoint (the class sets the default; a
            task may take another per instance, as :class:`~visattn.tasks.caption.CaptionTask` does);
            ``mode`` "max" or "min".
        sharded_eval: :meth:`evaluate` gathers results across ranks itself (with
            :func:`visattn.distributed.gather_shards` / ``merge_shards``), so under torchrun every rank
            evaluates its share of the validation set; False: rank 0 evaluates all of it.
        find_unused_parameters: DDP must look for parameters without a gradient (e.g. hard attention's
            two context paths).
        predict_options: the keyword options of :meth:`predict` with their defaults.
        weight_dict: the weight of every loss term in the total (terms not in it are logged, not optimised).
    """

    name: ClassVar[str]
    model_name: ClassVar[str]
    monitor: str
    mode: ClassVar[str] = "max"
    sharded_eval: ClassVar[bool] = True
    predict_options: ClassVar[dict[str, Any]] = {}
    find_unused_parameters: bool = False
    weight_dict: dict[str, float]

    @abstractmethod
    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Samples -> a batch dict with at least ``images`` (B, 3, H, W) (or cached ``features``)."""

    @abstractmethod
    def criterion(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        """The named, unweighted loss terms (``loss_*``) of one batch; the engine weighs them."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Metrics over a whole loader (the model is unwrapped and in eval mode)."""

    @abstractmethod
    def predict(self, model: nn.Module, images: Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                **options: Any) -> list[Result]:
        """Typed results for a batch (B, 3, S, S) in [0, 1] already at the model's size; ``sizes`` are the
        original (H, W) and ``sources`` the names of the images. Options: :attr:`predict_options`."""

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: one group of every trainable parameter."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def weight_of(self, term: str) -> float:
        """The weight of a loss term: ``weight_dict[term]``; an auxiliary layer's ``loss_x_<i>`` weighs as
        ``loss_x`` (DETR's auxiliary losses); 0 for a term the dict does not name."""
        if term in self.weight_dict:
            return self.weight_dict[term]
        base, _, index = term.rpartition("_")
        return self.weight_dict.get(base, 0.0) if index.isdigit() else 0.0

    def total_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """Σ ``weight_of(k) · terms[k]`` over the weighted terms."""
        weighted = [value * self.weight_of(k) for k, value in terms.items() if self.weight_of(k) != 0]
        if not weighted:
            raise ValueError(f"task {self.name!r}: no weighted loss term among {sorted(terms)}")
        return sum(weighted[1:], weighted[0])

    def check_predict_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in; ValueError naming an unknown one and the valid ones."""
        unknown = sorted(set(options) - set(self.predict_options))
        if unknown:
            valid = ", ".join(self.predict_options) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for a {self.name} model; valid: {valid}")
        return {**self.predict_options, **options}


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator registering a task under its ``name``; refuses duplicate names."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is already registered")
    _TASKS[cls.name] = cls
    return cls


def _ensure_registered() -> None:
    import visattn.tasks.caption  # noqa: F401  (registration happens at import)
    import visattn.tasks.classify  # noqa: F401
    import visattn.tasks.detect  # noqa: F401


def list_tasks() -> list[str]:
    """The registered task names."""
    _ensure_registered()
    return sorted(_TASKS)


def get_task(name: str, **options: Any) -> Task:
    """The task ``name`` built with ``options`` (its constructor's keyword arguments).

    Raises:
        ValueError: an unknown task name, listing the valid ones.
    """
    _ensure_registered()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name](**options)
