"""Input-pipeline throughput: images per second the data loaders deliver, without and with DataLoader workers.

Three sources, each read through a ``DataLoader`` (batches of ``--batch-size``) with 0 workers (the
reference: everything in the training process) and with ``--workers`` worker processes (persistent, as
the engine makes them), alternating, median of ``--repeats`` passes after a warm-up pass:

- ``procedural``: caption scenes drawn on the fly (``SceneDataset``, not materialised);
- ``decode``: the same scenes written once as JPEG files, then decoded and resized at every access by the
  product's loader (``RecordSource``: ``load_image`` + ``image_to_tensor``), as for COCO/Flickr images;
- ``memory``: scenes rendered once into memory (``SceneSource``), what procedural training reads.

Compare the figures with the images per second a training step consumes (``visattn bench
caption-train``: batch size / seconds per step) to see that loading is not the bottleneck.

Run: ``visattn bench data [--image-size 224 --num-images 256 --workers 2] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

import _timing
from visattn.data.scenes import SceneConfig, SceneDataset, make_scene
from visattn.data.caption_data import RecordSource, SceneSource

SOURCES = ("procedural", "decode", "memory")


def _images(samples: list[dict[str, Any]]) -> torch.Tensor:
    return torch.stack([s["image"] for s in samples])  # (B, 3, S, S)


def make_source(kind: str, *, image_size: int, num_images: int, workdir: str, seed: int = 0) -> Dataset:
    """A data set of ``num_images`` caption scenes read the ``kind`` way (module docstring)."""
    config = SceneConfig(kind="caption", image_size=image_size)
    if kind == "procedural":
        return SceneDataset(config, num_samples=num_images, seed=seed)
    if kind == "memory":
        return SceneSource(config, num_samples=num_images, seed=seed)
    if kind != "decode":
        raise ValueError(f"unknown source {kind!r}; valid: {', '.join(SOURCES)}")
    folder = Path(workdir) / "jpeg"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num_images):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            make_scene(config, seed, i)["image"].save(path, quality=90)
        records.append(SimpleNamespace(path=str(path), image_id=i, captions=["a scene"], tokens=[["a", "scene"]]))
    return RecordSource(records, image_size=image_size, name=f"{num_images} JPEG scenes")


def make_pass(dataset: Dataset, *, workers: int, batch_size: int) -> Callable[[], int]:
    """One pass over the data set through a DataLoader; returns the number of images delivered."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_images, num_workers=workers,
                        persistent_workers=workers > 0)

    def one_pass() -> int:
        return sum(len(batch) for batch in loader)

    return one_pass


def memory_workload(source: str, workers: int, image_size: int, num_images: int, batch_size: int,
                    seed: int) -> Callable[[], int]:
    """Entry point of the peak-memory child process (see ``_timing.peak_memory``)."""
    workdir = tempfile.mkdtemp(prefix="visattn-bench-data-")
    dataset = make_source(source, image_size=image_size, num_images=num_images, workdir=workdir, seed=seed)
    return make_pass(dataset, workers=workers, batch_size=batch_size)


def run(*, image_size: int = 224, num_images: int = 256, workers: int = 2, batch_size: int = 32,
        sources: tuple[str, ...] = SOURCES, repeats: int = 3, threads: int | None = None, seed: int = 0,
        memory: bool = True) -> dict[str, Any]:
    """Measure every source with 0 and with ``workers`` workers; returns the JSON-able report."""
    if num_images < 1 or batch_size < 1 or workers < 1 or image_size < 8:
        raise ValueError("--num-images, --batch-size and --workers must be >= 1, --image-size >= 8")
    device = _timing.configure(threads, "cpu")
    report: dict[str, Any] = {"benchmark": "data", **_timing.device_info(device), "image_size": image_size,
                              "num_images": num_images, "workers": workers, "batch_size": batch_size,
                              "repeats": repeats}
    workdir = tempfile.mkdtemp(prefix="visattn-bench-data-")
    try:
        for source in sources:
            dataset = make_source(source, image_size=image_size, num_images=num_images, workdir=workdir, seed=seed)
            passes = {f"workers_{w}": make_pass(dataset, workers=w, batch_size=batch_size) for w in (0, workers)}
            times = _timing.time_alternating(passes, repeats=repeats, warmup=1, device=device)
            entry: dict[str, Any] = {}
            for name, seconds in times.items():
                median = _timing.summarise(seconds)["median"]
                entry[name] = {"seconds_per_pass": median, "images_per_s": num_images / median}
                if memory:
                    entry[name]["memory"] = _timing.peak_memory(
                        "data_pipeline", "memory_workload",
                        {"source": source, "workers": int(name.split("_")[1]), "image_size": image_size,
                         "num_images": num_images, "batch_size": batch_size, "seed": seed}, device=device)
            entry["speedup_workers"] = (entry[f"workers_{workers}"]["images_per_s"]
                                        / entry["workers_0"]["images_per_s"])
            report[source] = entry
            del passes  # ends the persistent workers
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224, help="(default: 224)")
    parser.add_argument("--num-images", type=int, default=256, help="images per pass (default: 256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers to compare with 0 (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {','.join(SOURCES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the main process (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    sources = tuple(s for s in args.sources.split(",") if s)
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        print(f"data: error: unknown source(s) {unknown}; valid: {', '.join(SOURCES)}", file=sys.stderr)
        return 2
    try:
        report = run(image_size=args.image_size, num_images=args.num_images, workers=args.workers,
                     batch_size=args.batch_size, sources=sources, repeats=args.repeats, threads=args.threads,
                     seed=args.seed, memory=not args.no_memory)
    except ValueError as err:
        print(f"data: error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        for source in sources:
            e = report[source]
            print(f"{source:10s} 0 workers {e['workers_0']['images_per_s']:8.1f} images/s, {args.workers} workers "
                  f"{e[f'workers_{args.workers}']['images_per_s']:8.1f} images/s", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
