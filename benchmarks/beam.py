"""Beam search speed: visattn's batched beam search vs one image at a time, with identical captions.

Three ways to caption the same N images with beam size k, on the same weights, in one run (alternating,
median of ``--repeats`` after a warm-up on two images):

- ``batched``: ``Captioner.generate`` over ``--decode-batch`` images at a time (their k beams each in
  one tensor pass, keys once per image), as evaluation decodes a loader batch;
- ``visattn_one_at_a_time``: the same ``generate``, called per image (what batching alone buys);
- ``reference``: the textbook loop (``reference_sat.reference_beam_search``): one image at a time, the
  image projection recomputed at every step.

All three use the same search rules, so the captions must be identical; the report counts the images
where they are. Random weights give flat word distributions where near-ties would make the comparison a
coin toss, so the output layer is scaled by ``--sharpness`` (as a trained model's is peaked).

All three run on ``--device`` (default: the CPU, where the figures of the README's CPU table come from;
``cuda`` decodes every one of them on the GPU, the textbook loop included).

Run: ``visattn bench beam [--num-images 100 --beam-size 5] [--device cuda] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from typing import Any, Callable

import torch
from torch import Tensor, nn

import _timing
from caption_train import Dims, build_models
from reference_sat import reference_beam_search


def build(dims: Dims, *, num_images: int, sharpness: float, seed: int) -> tuple[nn.Module, nn.Module, Tensor]:
    """(reference, captioner) in eval mode with the same weights, and N images' annotations (N, L, C)."""
    reference, captioner = build_models(dims, dropout=0.0, seed=seed)
    with torch.no_grad():
        reference.fc.weight.mul_(sharpness)
        captioner.out_vocab.weight.mul_(sharpness)
    gen = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(num_images, dims.grid**2, dims.encoder_dim, generator=gen).relu_()
    return reference.eval(), captioner.eval(), features


def decoders(reference: nn.Module, captioner: nn.Module, *, beam_size: int, max_len: int,
             decode_batch: int) -> dict[str, Callable[[Tensor], list[list[int]]]]:
    """name -> features (N, L, C) -> the best caption's token ids per image."""
    start, end = captioner.start_id, captioner.end_id  # square grids: generate infers (H', W') from L

    def batched(features: Tensor) -> list[list[int]]:
        return [h[0].tokens for first in range(0, len(features), decode_batch)
                for h in captioner.generate(features=features[first : first + decode_batch], beam_size=beam_size,
                                            max_len=max_len)]

    def visattn_one_at_a_time(features: Tensor) -> list[list[int]]:
        return [captioner.generate(features=features[i : i + 1], beam_size=beam_size, max_len=max_len)[0][0].tokens
                for i in range(len(features))]

    def textbook(features: Tensor) -> list[list[int]]:
        return [reference_beam_search(reference, features[i : i + 1], beam_size=beam_size, max_len=max_len,
                                      start_id=start, end_id=end, banned=(captioner.pad_id, start))
                for i in range(len(features))]

    return {"batched": batched, "visattn_one_at_a_time": visattn_one_at_a_time, "reference": textbook}


def memory_workload(which: str, dims: dict[str, int], num_images: int, beam_size: int, max_len: int,
                    decode_batch: int, sharpness: float, seed: int) -> Callable[[], Any]:
    """Entry point of the peak-memory child process (see ``_timing.peak_memory``)."""
    reference, captioner, features = build(Dims(**dims), num_images=num_images, sharpness=sharpness, seed=seed)
    decode = decoders(reference, captioner, beam_size=beam_size, max_len=max_len, decode_batch=decode_batch)[which]
    return lambda: decode(features)


def run(dims: Dims, *, num_images: int = 100, beam_size: int = 5, max_len: int = 20, decode_batch: int = 50,
        repeats: int = 3, threads: int | None = None, sharpness: float = 8.0, seed: int = 0,
        memory: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Measure the three decoders side by side; returns the JSON-able report (module docstring)."""
    if min(num_images, beam_size, max_len, decode_batch) < 1:
        raise ValueError("--num-images, --beam-size, --max-len and --decode-batch must be >= 1")
    chosen = _timing.configure(threads, device)
    reference, captioner, features = build(dims, num_images=num_images, sharpness=sharpness, seed=seed)
    reference, captioner, features = reference.to(chosen), captioner.to(chosen), features.to(chosen)
    device = chosen
    decode = decoders(reference, captioner, beam_size=beam_size, max_len=max_len, decode_batch=decode_batch)
    captions: dict[str, list[list[int]]] = {}
    with torch.no_grad():
        for name, fn in decode.items():
            fn(features[:2])  # warm-up

        def timed(name: str) -> Callable[[], None]:
            return lambda: captions.__setitem__(name, decode[name](features))

        times = _timing.time_alternating({name: timed(name) for name in decode}, repeats=repeats, warmup=0,
                                         device=device)
    widths = {k: v for k, v in asdict(dims).items() if k not in ("batch_size", "max_len")}
    report: dict[str, Any] = {"benchmark": "beam", **_timing.device_info(device), "dims": widths,
                              "num_images": num_images, "beam_size": beam_size, "max_len": max_len,
                              "decode_batch": decode_batch,
                              "repeats": repeats, "sharpness": sharpness}
    lengths = [len(c) for c in captions["batched"]]
    report["mean_caption_words"] = sum(lengths) / len(lengths)
    report["captions_cut_at_max_len"] = sum(length >= max_len for length in lengths)
    kwargs = {"dims": asdict(dims), "num_images": num_images, "beam_size": beam_size, "max_len": max_len,
              "decode_batch": decode_batch, "sharpness": sharpness, "seed": seed}
    for name in decode:
        seconds = _timing.summarise(times[name])
        entry: dict[str, Any] = {"seconds": seconds["median"], "seconds_min": seconds["min"],
                                 "seconds_max": seconds["max"], "images_per_s": num_images / seconds["median"],
                                 "identical_to_batched": sum(a == b for a, b in zip(captions[name],
                                                                                    captions["batched"]))}
        if memory:
            with torch.no_grad():
                entry["memory"] = _timing.peak_memory("beam", "memory_workload", {"which": name, **kwargs},
                                                      device=device, run=lambda: decode[name](features))
        report[name] = entry
    report["speedup"] = report["batched"]["images_per_s"] / report["reference"]["images_per_s"]
    report["speedup_batching_alone"] = (report["batched"]["images_per_s"]
                                        / report["visattn_one_at_a_time"]["images_per_s"])
    report["identical_captions"] = report["reference"]["identical_to_batched"] == num_images
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench beam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(replace(Dims(), max_len=20)).items():
        if name in ("batch_size",):
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value, help=f"(default: {value})")
    parser.add_argument("--num-images", type=int, default=100, help="(default: 100)")
    parser.add_argument("--beam-size", type=int, default=5, help="(default: 5)")
    parser.add_argument("--decode-batch", type=int, default=50,
                        help="images per batched generate call (default: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per decoder (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--sharpness", type=float, default=8.0, help="output-layer scale (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    try:
        dims = Dims(**{name: getattr(args, name) for name in asdict(Dims()) if name != "batch_size"})
        report = run(dims, num_images=args.num_images, beam_size=args.beam_size, max_len=args.max_len,
                     decode_batch=args.decode_batch, repeats=args.repeats, threads=args.threads,
                     sharpness=args.sharpness, seed=args.seed, memory=not args.no_memory, device=args.device)
    except ValueError as err:
        print(f"beam: error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        for name in ("batched", "visattn_one_at_a_time", "reference"):
            e = report[name]
            print(f"{name:22s} {e['images_per_s']:8.2f} images/s, identical to batched: {e['identical_to_batched']}"
                  f"/{report['num_images']}", file=sys.stderr)
        print(f"speedup {report['speedup']:.1f}x (batching alone {report['speedup_batching_alone']:.1f}x) on "
              f"{report['device']} ({report['threads']} threads)", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
