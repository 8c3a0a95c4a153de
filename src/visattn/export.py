"""Export a checkpoint to ONNX or torch.export graphs, with a ``visattn.json`` that says how to run them.

    export_checkpoint("runs/cap/best.safetensors", "exported/cap", format="onnx")

writes a folder with the graphs of :mod:`visattn.heads.export_graphs` (``classifier.onnx``, ``detector.onnx``,
or ``encoder.onnx`` + ``step.onnx``; ``.pt2`` ExportedPrograms for ``format="torch-export"``) and
``visattn.json``: the task, class names or vocabulary with the special token ids, the image size and
normalisation, the grid, each graph's inputs and outputs with their dynamic dimensions, the exporter and
opset, and the source checkpoint's sha256. :mod:`visattn.runtime` reads that folder without PyTorch.

ONNX goes through ``torch.onnx.export(dynamo=True)`` at opset 20 (the exporter's own default, so no version
conversion runs) with the weights inside the file, and every graph is checked with ``onnx.checker``.
torch.export programs are checked at batch 1 and traced again with size-oblivious shapes (as the ONNX exporter
traces) when their guards refuse it; docs/design.md says why, and where that is not enough (the multi-head
captioner step needs k >= 2 beams there).

Both exporters specialise a dimension whose example size is 1, so graphs are always traced at 2 images x 2
beams and marked dynamic from 1. The folder is written beside its target and renamed into place, so a failed
export leaves nothing half-written; an existing folder is only replaced with ``force=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn.checkpoint import read_checkpoint
from visattn.heads.export_graphs import GRAPH_SIGNATURES, export_mode, graphs_for
from visattn.models import load

__all__ = ["ExportError", "export_checkpoint", "export_graphs", "FORMATS", "EXPORT_FORMAT", "EXPORT_VERSION",
           "ONNX_OPSET", "file_sha256"]

#: ``format`` names -> file suffix of the graphs.
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
EXPORT_FORMAT = "visattn-export"
EXPORT_VERSION = 1
ONNX_OPSET = 20
TASKS = ("classify", "caption", "detect")
#: Example sizes the graphs are traced at (size 1 would be specialised; see the module docstring).
EXAMPLE_BATCH, EXAMPLE_BEAMS = 2, 2


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an output folder that may not be written."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _example_inputs(graphs: dict[str, nn.Module], image_size: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs at 2 images (x 2 beams for the step), from the graphs themselves."""
    generator = torch.Generator().manual_seed(0)  # the caller's random state stays untouched
    images = torch.rand(EXAMPLE_BATCH, 3, image_size, image_size, generator=generator)
    if "encoder" not in graphs:
        return {name: (images,) for name in graphs}
    with torch.no_grad():
        keys, values, h, c = graphs["encoder"](images)
    beams = lambda x: x.unsqueeze(1).expand(-1, EXAMPLE_BEAMS, -1).contiguous()  # (B, D) -> (B, k, D)
    prev = torch.full((EXAMPLE_BATCH, EXAMPLE_BEAMS), graphs["step"].model.start_id, dtype=torch.long)
    return {"encoder": (images,), "step": (prev, beams(h), beams(c), keys, values)}


def _dynamic_shapes(graph_name: str, min_beams: int) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1)
    if graph_name != "step":
        return ({0: batch},)
    beams = torch.export.Dim("beams", min=min_beams)
    rows = {0: batch, 1: beams}
    return (rows, rows, rows, {0: batch}, {0: batch})


def _min_beams(model: nn.Module, fmt: str) -> int:
    # torch.export only: PyTorch's matmul decomposition guards k != 1 on the multi-head query layout.
    attention = getattr(getattr(model, "config", None), "attention", None)
    return 2 if fmt == "torch-export" and attention == "multihead" else 1


def _export_graph(graph: nn.Module, inputs: tuple, path: Path, *, name: str, fmt: str, min_beams: int) -> None:
    """One graph to ``path``: saved as an ExportedProgram, or translated to ONNX and checked."""
    input_names, output_names = GRAPH_SIGNATURES[name]
    shapes = _dynamic_shapes(name, min_beams)
    if fmt == "torch-export":
        torch.export.save(_torch_export(graph, inputs, shapes, min_beams), str(path))
        return
    import onnx

    # the module, not a program captured here: the ONNX exporter's own capture also handles the multi-head step
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    optimizer_log.setLevel(max(level, logging.WARNING))  # its INFO lines report every folded constant
    try:
        torch.onnx.export(graph, inputs, str(path), dynamo=True, opset_version=ONNX_OPSET,
                          input_names=list(input_names), output_names=list(output_names), dynamic_shapes=shapes,
                          external_data=False, verbose=False)
    finally:
        optimizer_log.setLevel(level)
    onnx.checker.check_model(onnx.load(str(path)))


def _torch_export(graph: nn.Module, inputs: tuple, shapes: tuple, min_beams: int) -> torch.export.ExportedProgram:
    """torch.export traced at 2 and checked by a run at 1 image (x ``min_beams`` beams).

    A plain trace of the captioner step keeps guards that refuse one beam (B·k != B), so the step is traced
    with size-oblivious shapes, as the ONNX exporter traces; that mode refuses the classifier and the detector
    (a batch != 1 guard), which trace plainly. A program that fails its check is traced the other way.
    """
    smallest = [x[:1, :min_beams] if len(shapes[i]) == 2 else x[:1] for i, x in enumerate(inputs)]
    step = len(shapes) > 1
    for oblivious in (step, not step):
        with torch.fx.experimental._config.patch(backed_size_oblivious=oblivious):
            try:
                program = torch.export.export(graph, inputs, dynamic_shapes=shapes)
            except Exception:  # noqa: BLE001 - torch.export's constraint errors; the other mode may work
                if oblivious != step:
                    raise
                continue
        try:
            with torch.no_grad():
                program.module()(*smallest)
            return program
        except Exception:  # noqa: BLE001 - a failed guard is an AssertionError or a RuntimeError, by version
            if oblivious != step:
                raise
    raise AssertionError("unreachable: the second mode returns or raises")


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb+") as handle:
            os.fsync(handle.fileno())


def _task_metadata(model: nn.Module, task: str) -> dict[str, Any]:
    config = model.config
    if task == "classify":
        glimpses = config.num_glimpses if config.pooling == "attention" else 1
        return {"class_names": list(config.class_names), "num_glimpses": glimpses}
    if task == "detect":
        return {"class_names": list(config.class_names), "num_queries": config.num_queries,
                "no_object_class": config.num_classes}
    vocab = list(config.vocab)
    return {"vocab": vocab, "max_len": config.max_len, "attention": config.attention,
            "attention_mode": config.attention_mode,
            "special_ids": {"pad": model.pad_id, "start": model.start_id, "end": model.end_id,
                            "unk": vocab.index("<unk>") if "<unk>" in vocab else None}}


def _metadata(model: nn.Module, checkpoint: Any, fmt: str, files: dict[str, str], min_beams: int) -> dict[str, Any]:
    encoder = model.encoder
    size = int(model.config.image_size)
    grid = encoder.grid_size(size, size)
    graphs = {}
    for name, file in files.items():
        inputs, outputs = GRAPH_SIGNATURES[name]
        dynamic = {"batch": [1, None]} if name != "step" else {"batch": [1, None], "beams": [min_beams, None]}
        graphs[name] = {"file": file, "inputs": list(inputs), "outputs": list(outputs), "dynamic": dynamic}
    exporter = ({"name": "torch.onnx.export", "dynamo": True, "opset": ONNX_OPSET} if fmt == "onnx"
                else {"name": "torch.export", "opset": None})
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "task": checkpoint.task, "model": checkpoint.model,
        "graph_format": fmt, "exporter": {**exporter, "torch": torch.__version__},
        "checkpoint": {"file": Path(checkpoint.path).name, "sha256": file_sha256(checkpoint.path)},
        "image_size": size, "grid": [int(grid[0]), int(grid[1])],
        "normalisation": {"mean": [float(v) for v in encoder.mean.flatten()],
                          "std": [float(v) for v in encoder.std.flatten()], "in_graph": True,
                          "input": "RGB float32 in [0, 1], (B, 3, S, S), resized with Pillow's bilinear filter"},
        "graphs": graphs, **_task_metadata(model, checkpoint.task),
    }


def export_graphs(model: nn.Module, model_name: str, folder: str | os.PathLike, *, format: str = "onnx",
                  names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Write the graphs of an in-memory model (no ``visattn.json``) into an existing folder.

    Args:
        model: a registered model.
        model_name: its registry name ("classifier", "detector", "captioner").
        folder: where ``<graph><suffix>`` files go.
        format: "onnx" or "torch-export".
        names: only these graphs (default: all of the model's).

    Returns:
        graph name -> file name.
    """
    graphs = graphs_for(model, model_name)
    suffix, min_beams = FORMATS[format], _min_beams(model, format)
    files = {}
    with export_mode(model):
        examples = _example_inputs(graphs, int(model.config.image_size))
        for name, graph in graphs.items():
            if names is None or name in names:
                files[name] = f"{name}{suffix}"
                _export_graph(graph, examples[name], Path(folder) / files[name], name=name, fmt=format,
                              min_beams=min_beams)
    return files


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, format: str = "onnx",
                      force: bool = False) -> Path:
    """Export a checkpoint's model to ``out`` (module docstring).

    Args:
        checkpoint: a ``.safetensors`` checkpoint of any task.
        out: the folder to create.
        format: "onnx" or "torch-export".
        force: replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        ExportError: unknown format, a checkpoint of an unknown task, or ``out`` exists without ``force``.
        CheckpointError: a missing or corrupt checkpoint (the message names the file).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; pass force=True (--force) to replace it")
    header = read_checkpoint(checkpoint)
    if header.task not in TASKS:
        raise ExportError(f"{header.path}: cannot export a checkpoint of task {header.task!r}; "
                          f"valid tasks: {', '.join(TASKS)}")
    model = load(checkpoint, task=header.task)
    try:
        graphs_for(model, header.model)
    except ValueError as err:
        raise ExportError(f"{header.path}: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files = export_graphs(model, header.model, staging, format=format)
        meta = _metadata(model, header, format, files, _min_beams(model, format))
        (staging / "visattn.json").write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_tree(staging)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _replace_folder(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)

