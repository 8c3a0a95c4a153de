"""Training-step speed of each task's default model, as the engine runs it: eager, compiled, host syncs.

For each task (``classify``, ``caption``, ``detect``) one batch of procedural scenes (64 px) goes through
the step :func:`visattn.engine.train_one_epoch` runs: the task's criterion and weighted total under the
engine's autocast, backward,
gradient clipping (norm 5) and fused AdamW. The models are the defaults of ``visattn train classify`` and
``visattn train detect`` and the demo's captioner (8×8×128 grid, LSTM 256, attention 128).

Reported per task: the median of ``--steps`` timed steps after ``--warmup`` (``eager``); with
``--compile MODE`` also the same step with the model wrapped by ``torch.compile(mode=MODE)`` (what
``--compile`` does in the engine for ``default``): its first step (tracing and Inductor code generation
included) and its steady step; with ``--sync-debug`` (CUDA only) the host syncs of one eager step, found by
``torch.cuda.set_sync_debug_mode("warn")``: each warning with the innermost visattn (or benchmark) source
line that caused it, and how often it fired in the step.

Run: ``visattn bench train-step [--tasks classify,detect] [--compile default] [--sync-debug] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

import _timing

TASKS = ("classify", "caption", "detect")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def _classify(batch_size: int, image_size: int, seed: int) -> tuple[nn.Module, Any, dict]:
    from visattn.heads.classifier import ClassifierConfig
    from visattn.models import build_model
    from visattn.tasks.base import get_task
    from visattn.tasks.classify import scene_data

    data = scene_data(num_train=batch_size, num_val=1, image_size=image_size, seed=seed)
    config = ClassifierConfig(class_names=list(data.class_names), image_size=image_size)
    task = get_task("classify")
    return build_model("classifier", config), task, task.collate([data.train[i] for i in range(batch_size)])


def _caption(batch_size: int, image_size: int, seed: int) -> tuple[nn.Module, Any, dict]:
    from dataclasses import replace

    from visattn.data.caption_data import CaptionDataset, scene_data
    from visattn.models import build_model
    from visattn.tasks.base import get_task
    from visattn.tasks.demo import demo_model_config

    data = scene_data(num_train=batch_size, num_val=1, image_size=image_size, seed=seed)
    items = CaptionDataset(data.train, data.train.tokens, data.vocab, mode="random")  # one caption per image
    config = replace(demo_model_config(), vocab=data.vocab.to_list(), image_size=image_size)
    task = get_task("caption")
    return build_model("captioner", config), task, task.collate([items[i] for i in range(batch_size)])


def _detect(batch_size: int, image_size: int, seed: int) -> tuple[nn.Module, Any, dict]:
    from visattn.heads.detector import DetectorConfig
    from visattn.models import build_model
    from visattn.tasks.base import get_task
    from visattn.tasks.detect import scene_data

    data = scene_data(num_train=batch_size, num_val=1, image_size=image_size, seed=seed)
    names = list(data.class_names)
    config = DetectorConfig(num_classes=len(names), class_names=names, image_size=image_size)
    task = get_task("detect", num_classes=len(names))
    return build_model("detector", config), task, task.collate([data.train[i] for i in range(batch_size)])


BUILDERS = {"classify": _classify, "caption": _caption, "detect": _detect}


def _pinned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pinned(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_pinned(v) for v in value)
    return value


def build_step(task_name: str, *, batch_size: int = 32, image_size: int = 64, device: torch.device,
               dtype: str = "fp32", compile_mode: str = "none", seed: int = 0,
               lr: float = 1e-3, grad_clip: float = 5.0) -> Callable[[], torch.Tensor]:
    """A callable doing one engine training step of ``task_name``'s default model; returns the loss."""
    from visattn.engine import autocast_context

    if task_name not in BUILDERS:
        raise ValueError(f"unknown task {task_name!r}; valid tasks: {', '.join(TASKS)}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {compile_mode!r}; valid modes: {', '.join(COMPILE_MODES)}")
    torch.manual_seed(seed)
    model, task, batch = BUILDERS[task_name](batch_size, image_size, seed)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=device.type in ("cpu", "cuda"))
    train_model = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
    if device.type == "cuda":  # what the engine's loader does (pin_memory=True): every tensor pinned
        batch = _pinned(batch)

    def step() -> torch.Tensor:
        with autocast_context(device, dtype):
            loss = task.total_loss(task.criterion(train_model, batch, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return loss.detach()

    return step


def host_syncs(step: Callable[[], Any]) -> list[dict[str, Any]]:
    """The host syncs of one call of ``step`` (CUDA): ``[{"where", "warning", "count"}]``, most frequent first.

    ``where`` is the innermost frame of the repository's code (``src/visattn`` or ``benchmarks``) on the
    stack when the warning fired, else the innermost frame outside torch.
    """
    found: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if ("visattn" in f.filename or "benchmarks" in f.filename)
                and not f.filename.endswith(("train_step.py", "_timing.py"))]
        outside = [f for f in frames if "/torch/" not in f.filename and not f.filename.endswith("warnings.py")]
        frame = (ours or outside or frames)[-1]
        text = str(message).splitlines()[0][:120]
        found[(f"{frame.filename.split('/src/')[-1].split('/benchmarks/')[-1]}:{frame.lineno}", text)] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        old_show = warnings.showwarning
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old_show
    torch.cuda.synchronize()
    return [{"where": where, "warning": text, "count": count} for (where, text), count in found.most_common()]


def _time(step: Callable[[], Any], *, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    seconds = _timing.time_alternating({"step": step}, repeats=steps, warmup=warmup, device=device)["step"]
    return _timing.summarise(seconds)


def run(tasks: list[str], *, batch_size: int = 32, image_size: int = 64, steps: int = 20, warmup: int = 3,
        device: str = "auto", threads: int | None = None, dtype: str = "fp32", compile_mode: str = "none",
        sync_debug: bool = False, seed: int = 0) -> dict[str, Any]:
    """Measure each task's step; returns the JSON-able report (module docstring)."""
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1 and --warmup >= 0")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    if dtype not in _timing.TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_timing.TORCH_DTYPES)}")
    chosen = _timing.configure(threads, device)
    if sync_debug and chosen.type != "cuda":
        raise ValueError("--sync-debug needs a CUDA device")
    report: dict[str, Any] = {"benchmark": "train-step", **_timing.device_info(chosen), "batch_size": batch_size,
                              "image_size": image_size, "dtype": dtype, "steps": steps, "warmup": warmup}
    for name in tasks:
        kwargs = dict(batch_size=batch_size, image_size=image_size, device=chosen, dtype=dtype, seed=seed)
        eager = build_step(name, **kwargs)
        entry: dict[str, Any] = {}
        if sync_debug:
            eager()  # lazy state (optimizer moments, cuBLAS handles) is created outside the check
            try:
                entry["host_syncs"] = host_syncs(eager)
            except Exception as err:  # noqa: BLE001 - report it and still time the step
                entry["host_syncs_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        seconds = _time(eager, steps=steps, warmup=warmup, device=chosen)
        entry["eager"] = {"seconds_per_step": seconds["median"], "seconds_min": seconds["min"],
                          "images_per_s": batch_size / seconds["median"]}
        if compile_mode != "none":
            compiled = build_step(name, compile_mode=compile_mode, **kwargs)
            _timing.synchronize(chosen)
            start = time.perf_counter()
            try:
                compiled()
                _timing.synchronize(chosen)
                first = time.perf_counter() - start
                seconds = _time(compiled, steps=steps, warmup=warmup, device=chosen)
                entry["compiled"] = {"mode": compile_mode, "first_step_seconds": first,
                                     "seconds_per_step": seconds["median"], "seconds_min": seconds["min"],
                                     "speedup_over_eager": entry["eager"]["seconds_per_step"] / seconds["median"]}
            except Exception as err:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
                entry["compiled"] = {"mode": compile_mode, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        report[name] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench train-step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default: {','.join(TASKS)})")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--image-size", type=int, default=64, help="(default: 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--dtype", choices=sorted(_timing.TORCH_DTYPES), default="fp32",
                        help="the engine's autocast precision (default: fp32)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="none", dest="compile_mode",
                        help="also time the step under torch.compile(mode=...) (default: none)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="report the host syncs of one step (torch.cuda.set_sync_debug_mode; CUDA only)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    try:
        report = run([t for t in args.tasks.split(",") if t], batch_size=args.batch_size, image_size=args.image_size,
                     steps=args.steps, warmup=args.warmup, device=args.device, threads=args.threads,
                     dtype=args.dtype, compile_mode=args.compile_mode, sync_debug=args.sync_debug, seed=args.seed)
    except ValueError as err:
        print(f"train-step: error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        for name in TASKS:
            if name in report:
                e = report[name]
                line = f"{name:9s} eager {1000 * e['eager']['seconds_per_step']:.1f} ms/step"
                if "compiled" in e and "error" not in e["compiled"]:
                    c = e["compiled"]
                    line += f", compiled {1000 * c['seconds_per_step']:.1f} ms (first {c['first_step_seconds']:.1f} s)"
                if "host_syncs" in e:
                    line += f", host syncs {sum(s['count'] for s in e['host_syncs'])}"
                print(line, file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
