"""Checkpoints: one safetensors file holding the weights, the optimizer state and a JSON header.

Layout of ``<name>.safetensors``:

    tensors   "model/<state_dict key>"            the model's weights and buffers
              "optim/<param index>/<state key>"   optimizer state tensors (training checkpoints only)
              "rng/torch", "rng/cuda/<i>"          random generator states (training checkpoints only)
    metadata  "visattn": JSON {"format", "version", "task", "model", "config", "training"}

Loading never unpickles anything: safetensors holds raw tensors and the header is JSON. Files are
written to a temporary name in the same folder, flushed to disk and renamed over the target, so a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from visattn.data.core import DataError, write_atomic

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "read_checkpoint", "FORMAT", "VERSION"]

FORMAT = "visattn-checkpoint"
VERSION = 1


class CheckpointError(DataError):
    """A checkpoint that is missing, unreadable, truncated, or not what the caller expects."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: where it was read from.
        task: "classify", "caption" or "detect".
        model: the registered model name.
        config: the model config as a dict.
        state_dict: the model's tensors.
        training: the JSON part of the training state (epoch, step, best metric, ...); empty for exports.
        optimizer_tensors: "<param index>/<state key>" -> tensor.
        rng_tensors: "torch" / "cuda/<i>" -> generator state.
    """

    path: Path
    task: str
    model: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_tensors: dict[str, Tensor] = field(default_factory=dict)
    rng_tensors: dict[str, Tensor] = field(default_factory=dict)


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Rebuild an optimizer state_dict from a training checkpoint."""
    info = checkpoint.training.get("optimizer")
    if info is None:
        raise CheckpointError(checkpoint.path, reason="holds no optimizer state (not a training checkpoint)")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in checkpoint.optimizer_tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    task: str,
    model_name: str,
    config: dict[str, Any],
    training: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    save_rng: bool = False,
) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename).

    Args:
        path: target file, conventionally ``*.safetensors``.
        model: the model; a DDP/compiled wrapper is unwrapped by the caller.
        task, model_name, config: what :func:`visattn.load` needs to rebuild the model.
        training: JSON-able training state (epoch, step, history, ...).
        optimizer: when given, its state is stored for an exact resume.
        save_rng: store the torch (and CUDA) generator states.
    """
    # clone(): safetensors refuses tensors that share storage (tied weights, views).
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    training = dict(training or {})
    if optimizer is not None:
        optim_tensors, optim_json = _optimizer_split(optimizer)
        tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in optim_tensors.items()})
        training["optimizer"] = optim_json
    if save_rng:
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = state
    header = {"format": FORMAT, "version": VERSION, "task": task, "model": model_name, "config": config,
              "training": training}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"visattn": json.dumps(header)}))


def read_checkpoint(path: str | os.PathLike, *, task: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``.safetensors`` file.
        task: when given, the checkpoint must belong to this task.

    Raises:
        CheckpointError: missing file, not a safetensors file, truncated, not a visattn checkpoint,
            or a checkpoint of another task. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, reason="checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(path, reason=f"not a readable checkpoint (truncated or not safetensors): {err}") from err
    if "visattn" not in metadata:
        raise CheckpointError(path, reason="a safetensors file, but not a visattn checkpoint (no 'visattn' header)")
    try:
        header = json.loads(metadata["visattn"])
    except json.JSONDecodeError as err:
        raise CheckpointError(path, "header", reason=f"corrupt checkpoint header: {err}") from err
    if header.get("format") != FORMAT or not isinstance(header.get("version"), int):
        raise CheckpointError(path, "header", "format", f"is {header.get('format')!r}, an unknown checkpoint format")
    if header["version"] > VERSION:
        raise CheckpointError(path, "header", "version", f"is {header['version']}, newer than this visattn ({VERSION})")
    for key in ("task", "model", "config"):
        if key not in header:
            raise CheckpointError(path, "header", reason=f"missing field {key!r}")
    if task is not None and header["task"] != task:
        raise CheckpointError(path, reason=f"this is a {header['task']!r} checkpoint (model {header['model']!r}), "
                                           f"expected a {task!r} one")
    groups: dict[str, dict[str, Tensor]] = {"model": {}, "optim": {}, "rng": {}}
    for key, tensor in tensors.items():
        prefix, _, rest = key.partition("/")
        if prefix not in groups:
            raise CheckpointError(path, reason=f"unexpected tensor {key!r}")
        groups[prefix][rest] = tensor
    return Checkpoint(
        path=path,
        task=header["task"],
        model=header["model"],
        config=header["config"],
        state_dict=groups["model"],
        training=header.get("training") or {},
        optimizer_tensors=groups["optim"],
        rng_tensors=groups["rng"],
    )
