"""The model registry: build a model by name, rebuild one from a checkpoint with nothing else.

Every model is an ``nn.Module`` constructed as ``Model(config)`` from a dataclass config that it keeps
as ``self.config``; that config is everything needed to rebuild it (class names and vocabularies
included), and the checkpoint stores it beside the weights.

A variant (timm's size variants) is a registered model with another default config: ``tiny_classifier``,
``tiny_captioner`` and ``tiny_detector`` (:mod:`visattn.heads.variants`) are built, saved and loaded exactly
like the full-size models, in a fraction of a second; the tests and smoke runs use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, TypeVar

from torch import nn

from visattn.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from visattn.config import config_from_dict

__all__ = ["register_model", "register_variant", "build_model", "list_models", "model_entry", "load",
           "model_from_checkpoint", "ModelEntry"]

M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """One registered name: the class, its config class, its task, and the config ``build_model`` uses by
    default (None: the config class's own defaults)."""

    name: str
    cls: type[nn.Module]
    config_cls: type
    task: str
    default_config: Callable[[], Any] | None = None

    def make_config(self) -> Any:
        return self.config_cls() if self.default_config is None else self.default_config()


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, *, task: str) -> Callable[[M], M]:
    """Class decorator registering a model under ``name`` for ``task``; refuses duplicate names."""

    def add(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name].cls.__name__}")
        _MODELS[name] = ModelEntry(name, cls, config_cls, task)
        return cls

    return add


def register_variant(name: str, *, base: str, config: Callable[[], Any]) -> None:
    """Register ``name`` as the model ``base`` with ``config()`` as its default config; refuses duplicate names.

    Args:
        name: the variant's name, e.g. ``"tiny_classifier"``.
        base: an already registered model name; the variant shares its class, config class and task.
        config: returns a fresh config of ``base``'s config class.
    """
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered by {_MODELS[name].cls.__name__}")
    if base not in _MODELS:
        raise ValueError(f"variant {name!r}: unknown base model {base!r}; registered: {', '.join(sorted(_MODELS))}")
    entry = _MODELS[base]
    _MODELS[name] = ModelEntry(name, entry.cls, entry.config_cls, entry.task, config)


def _ensure_registered() -> None:
    # Registration happens when the head modules are imported; import them on first use.
    import visattn.heads  # noqa: F401


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task."""
    _ensure_registered()
    return sorted(n for n, e in _MODELS.items() if task is None or e.task == task)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ValueError listing valid names for an unknown one."""
    _ensure_registered()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _MODELS[name]


def build_model(name: str, config: Any = None, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        config: its config dataclass, or a dict of fields (unknown keys are a ValueError; fields left out take
            the config class's defaults); None for the entry's default config (a variant's own).
        **overrides: fields replacing those of ``config``.
    """
    entry = model_entry(name)
    if config is None:
        config = entry.make_config()
    elif isinstance(config, dict):
        config = config_from_dict(entry.config_cls, config, source=f"{name} config")
    elif not isinstance(config, entry.config_cls):
        raise ValueError(f"model {name!r} takes a {entry.config_cls.__name__}, got {type(config).__name__}")
    if overrides:
        config = replace(config, **overrides)
    return entry.cls(config)


def _without_weight_files(config: Any) -> Any:
    """The config with no pretrained-weights source: the checkpoint already holds every weight, and the
    file the encoder was initialised from may not exist on this machine."""
    encoder = getattr(config, "encoder", None)
    if encoder is not None and getattr(encoder, "weights", None) is not None:
        config = replace(config, encoder=replace(encoder, weights=None))
    return config


def load(path: str | os.PathLike, *, task: str | None = None, map_location: str = "cpu") -> nn.Module:
    """Rebuild a ready model (eval mode) from a checkpoint alone.

    Args:
        path: a ``.safetensors`` checkpoint written by visattn.
        task: when given, refuse checkpoints of another task.
        map_location: device for the weights.

    Raises:
        CheckpointError: missing/corrupt/mismatched checkpoint, naming the file.
    """
    return model_from_checkpoint(read_checkpoint(path, task=task), map_location=map_location)


def model_from_checkpoint(checkpoint: Checkpoint, *, map_location: str = "cpu") -> nn.Module:
    """The ready model (eval mode) of a checkpoint already read with :func:`~visattn.checkpoint.read_checkpoint`.

    Raises:
        CheckpointError: an unknown model name, a config that does not fit, or weights that do not fit.
    """
    try:
        entry = model_entry(checkpoint.model)
        # fields added after a checkpoint was written take the value it was trained with, not today's default
        stored = {**getattr(entry.config_cls, "stored_defaults", {}), **checkpoint.config}
        config = config_from_dict(entry.config_cls, stored, source=f"checkpoint {checkpoint.path}")
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    model = entry.cls(_without_weight_files(config))
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit model {checkpoint.model!r}: {err}") from err
    return model.to(map_location).eval()
