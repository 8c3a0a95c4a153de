"""Export speed: ONNX Runtime vs eager PyTorch vs torch.export, and a cold process's caption time.

For the demo captioner (beam 3) and the demo classifier, on the same weights in one run: per-image latency and
images/s at batch 1 and 16 with 1 and 2 threads, for

- ``eager``: :class:`visattn.Predictor` on preprocessed tensors (``Captioner.generate`` / the forward pass);
- ``torch_export``: the ``.pt2`` ExportedPrograms of ``visattn export --format torch-export``, the caption
  search being visattn's own (:mod:`visattn.heads.beam`) around the exported step;
- ``onnxruntime``: :class:`visattn.runtime.OnnxPredictor` on preprocessed arrays (numpy beam search);
  both predictors return their result objects, the torch.export row only the raw outputs.

Each cell: one warm-up, then the three alternate (``_timing.time_alternating``), median of ``--repeats``.
Then the cold start: a fresh process that loads a model and captions one PNG, ``python -m visattn.runtime``
against ``visattn caption`` (which also draws its figure), median of ``--cold-repeats``. Without
``--caption-checkpoint`` / ``--classify-checkpoint`` the demo configs get random weights, the captioner's
output layer scaled by ``--sharpness`` so that its word distributions are peaked like a trained model's, and
its ``<end>`` made unlikely so that every caption runs ``--max-len`` steps (a trained one stops at ``<end>``).

Run: ``visattn bench export [--threads-list 1 2 --batch-sizes 1 16] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import _timing
from visattn.checkpoint import save_checkpoint
from visattn.config import config_to_dict
from visattn.data.vocab import END, PAD, START, UNK
from visattn.export import export_checkpoint
from visattn.heads.beam import beam_search
from visattn.heads.classifier import ClassifierConfig
from visattn.models import build_model, load
from visattn.predictor import Predictor, Prepared
from visattn.runtime import OnnxPredictor
from visattn.runtime.predictor import PreparedArrays
from visattn.tasks.demo import demo_model_config


def checkpoints(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The two checkpoints to measure: given ones, or the demo configs with random weights."""
    paths = {}
    # the demo's vocabulary size: 4 special tokens and the procedural scenes' 48 words
    caption_config = replace(demo_model_config(), vocab=[PAD, START, END, UNK] + [f"word{i}" for i in range(48)])
    for task, name, given, config in (("caption", "captioner", args.caption_checkpoint, caption_config),
                                      ("classify", "classifier", args.classify_checkpoint, ClassifierConfig())):
        if given is not None:
            paths[task] = Path(given)
            continue
        torch.manual_seed(args.seed)
        model = build_model(name, config).eval()
        if task == "caption":
            with torch.no_grad():
                model.out_vocab.weight.mul_(args.sharpness)
                model.out_vocab.bias[model.end_id] -= 100.0  # every caption runs --max-len steps
        paths[task] = save_checkpoint(folder / f"{task}.safetensors", model, task=task, model_name=name,
                                      config=config_to_dict(config))
    return paths


def pt2_caption(folder: Path, model: torch.nn.Module, beam_size: int, max_len: int) -> Callable[[torch.Tensor], Any]:
    """visattn's beam search around the exported encoder and step programs."""
    encoder = torch.export.load(str(folder / "encoder.pt2")).module()
    step_program = torch.export.load(str(folder / "step.pt2")).module()

    def caption(images: torch.Tensor):
        keys, values, h, c = encoder(images)
        batch = images.shape[0]

        def step(prev: torch.Tensor, state: tuple[torch.Tensor, ...]):
            rows = lambda x: x.reshape(batch, beam_size, *x.shape[1:])  # (B·k, ...) -> (B, k, ...)
            log_probs, alpha, h_out, c_out = step_program(rows(prev), rows(state[0]), rows(state[1]), keys, values)
            flat = lambda x: x.reshape(batch * beam_size, -1)  # (B, k, ...) -> (B·k, ...)
            return flat(log_probs), flat(alpha), (flat(h_out), flat(c_out))

        state = (h.repeat_interleave(beam_size, 0), c.repeat_interleave(beam_size, 0))  # (B·k, D)
        return beam_search(step, state, batch_size=batch, beam_size=beam_size, start_id=model.start_id,
                           end_id=model.end_id, max_len=max_len)

    return caption


def measure(task: str, paths: dict[str, Path], folders: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    model = load(paths[task], task=task)
    predictor = Predictor.from_checkpoint(paths[task], device="cpu")
    size = int(model.config.image_size)
    rows = []
    for threads in args.threads_list:
        torch.set_num_threads(threads)
        # no spinning: an idle ONNX Runtime worker would otherwise take a core from the PyTorch runs it alternates with
        ort = OnnxPredictor(folders["onnx"], threads=threads, spinning=False)
        if task == "caption":
            pt2 = pt2_caption(folders["torch-export"], model, args.beam_size, args.max_len)
        else:
            pt2 = torch.export.load(str(folders["torch-export"] / "classifier.pt2")).module()
        for batch in args.batch_sizes:
            images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            sources = [f"<image {i}>" for i in range(batch)]
            prepared = PreparedArrays(images.numpy(), [(size, size)] * batch, sources)
            torch_prepared = Prepared(images, [(size, size)] * batch, sources)
            if task == "caption":
                options = {"beam_size": args.beam_size, "max_len": args.max_len}
                functions = {"eager": lambda: predictor.predict(torch_prepared, batch_size=batch, **options),
                             "torch_export": lambda: pt2(images),
                             "onnxruntime": lambda: ort.predict(prepared, batch_size=batch, **options)}
            else:
                functions = {"eager": lambda: predictor.predict(torch_prepared, batch_size=batch),
                             "torch_export": lambda: pt2(images),
                             "onnxruntime": lambda: ort.predict(prepared, batch_size=batch)}
            with torch.inference_mode():
                times = _timing.time_alternating(functions, repeats=args.repeats, warmup=1,
                                                 device=torch.device("cpu"))
            for runtime, seconds in times.items():
                median = statistics.median(seconds)
                rows.append({"model": task, "runtime": runtime, "threads": threads, "batch": batch,
                             "ms_per_image": round(1000 * median / batch, 3),
                             "images_per_s": round(batch / median, 2), "seconds": _timing.summarise(seconds)})
            print(f"{task} threads={threads} batch={batch}: " + ", ".join(
                f"{r['runtime']} {r['ms_per_image']} ms/image" for r in rows[-3:]), file=sys.stderr)
    if task == "caption":
        with torch.inference_mode():
            hyps = model.generate(torch.rand(16, 3, size, size), beam_size=args.beam_size, max_len=args.max_len)
        rows.append({"model": task, "mean_caption_tokens": statistics.mean(len(h[0].tokens) for h in hyps)})
    return rows


def cold_start(paths: dict[str, Path], folder: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds for a fresh process to load a captioner and caption one image (median of cold repeats)."""
    image = work / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    threads = str(max(args.threads_list))
    commands = {
        "onnxruntime": [sys.executable, "-m", "visattn.runtime", str(folder), str(image), "--beam-size",
                        str(args.beam_size), "--max-len", str(args.max_len), "--threads", threads],
        "visattn_caption": [sys.executable, "-m", "visattn", "caption", str(image), "--checkpoint",
                            str(paths["caption"]), "--beam-size", str(args.beam_size), "--max-len", str(args.max_len),
                            "--device", "cpu", "--out", str(work / "figures")],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.cold_repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
            times[name].append(time.perf_counter() - start)
    report = {name: _timing.summarise(t) for name, t in times.items()}
    report["ratio"] = round(report["onnxruntime"]["median"] / report["visattn_caption"]["median"], 3)
    report["note"] = "visattn caption also draws its PNG + GIF figure"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption-checkpoint", default=None, help="a trained captioner (default: demo config)")
    parser.add_argument("--classify-checkpoint", default=None, help="a trained classifier (default: demo config)")
    parser.add_argument("--beam-size", type=int, default=3, help="(default: 3)")
    parser.add_argument("--max-len", type=int, default=12,
                        help="tokens per caption; the random captioner never ends earlier (default: 12, about the "
                             "demo's caption length)")
    parser.add_argument("--threads-list", type=int, nargs="+", default=[1, 2], help="(default: 1 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="(default: 1 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default: 5)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold processes per command (default: 3)")
    parser.add_argument("--sharpness", type=float, default=8.0, help="random captioner's output scale (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="visattn-bench-export-") as tmp:
        work = Path(tmp)
        paths = checkpoints(work, args)
        folders, export_seconds = {}, {}
        for task in paths:
            for fmt in ("onnx", "torch-export"):
                start = time.perf_counter()
                folders[(task, fmt)] = export_checkpoint(paths[task], work / f"{task}-{fmt}", format=fmt)
                export_seconds[f"{task}/{fmt}"] = round(time.perf_counter() - start, 1)
        rows = []
        for task in paths:
            rows += measure(task, paths, {fmt: folders[(task, fmt)] for fmt in ("onnx", "torch-export")}, args)
        report = {"benchmark": "export", **_timing.device_info(torch.device("cpu")),
                  "weights": {t: ("given" if getattr(args, f"{t}_checkpoint") else "random, demo config")
                              for t in ("caption", "classify")},
                  "beam_size": args.beam_size, "export_seconds": export_seconds, "results": rows,
                  "cold_caption_one_image_s": cold_start(paths, folders[("caption", "onnx")], work, args)}
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
