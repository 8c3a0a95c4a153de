"""Typed configs to and from plain dicts (JSON), with errors that name the unknown key and its source."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

__all__ = ["config_to_dict", "config_from_dict"]

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict (nested dataclasses become dicts, tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass inside an annotation such as ``EncoderConfig`` or ``EncoderConfig | None``."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(typing.get_origin(arg) is tuple for arg in typing.get_args(annotation))
    return False


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields.

    Args:
        cls: the dataclass type.
        data: its fields as a mapping; missing fields take their defaults.
        source: where the data came from (a file name, "checkpoint x.safetensors"), used in errors.

    Raises:
        ValueError: for a key that is not a field of ``cls`` (listing the valid ones), or when the
            constructor rejects a value.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: {cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        nested = _dataclass_in(hints.get(name))
        if nested is not None and isinstance(value, Mapping):
            value = config_from_dict(nested, value, source=f"{source}.{name}")
        elif _is_tuple(hints.get(name)) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid {cls.__name__}: {err}") from err
