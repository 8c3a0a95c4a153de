"""``python -m visattn.runtime DIR IMAGE...``: predict with an ONNX export, without PyTorch.

Prints one line per image (the caption, the label, or the detections), or with ``--json`` one JSON object
per image (the results' ``to_dict()``). Exit codes as ``visattn``: 0, 2 usage error, 1 a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from visattn.runtime.predictor import OnnxPredictor


def _line(result) -> str:
    if result.task == "caption":
        return f"{result.source}\t{result.captions[0].score:.3f}\t{result.caption}"
    if result.task == "classify":
        return f"{result.source}\t{result.label}\t{result.score:.3f}"
    found = " ".join(f"{label}:{score:.2f}" for label, score in zip(result.labels, result.scores.tolist()))
    return f"{result.source}\t{len(result.labels)}\t{found}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visattn.runtime",
                                     description="Predict with a folder written by `visattn export --format onnx`.")
    parser.add_argument("folder", help="the export folder (holds visattn.json)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--beam-size", type=int, default=None, help="caption: beams (default 3)")
    parser.add_argument("--n-best", type=int, default=None, help="caption: hypotheses per image (default 1)")
    parser.add_argument("--max-len", type=int, default=None, help="caption: most tokens (default: the model's)")
    parser.add_argument("--top-k", type=int, default=None, help="classify/detect: kept classes or detections")
    parser.add_argument("--score-threshold", type=float, default=None, help="detect: minimum score (default 0.5)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per core)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("beam_size", args.beam_size), ("n_best", args.n_best), ("max_len", args.max_len),
                                 ("top_k", args.top_k),
                                 ("score_threshold", args.score_threshold)) if v is not None}
    try:
        predictor = OnnxPredictor(args.folder, threads=args.threads)
        results = predictor.predict(args.images, **options)
    except ValueError as err:  # ExportFolderError, ImageLoadError and bad options are ValueErrors
        print(f"visattn.runtime: error: {err}", file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result.to_dict()) if args.json else _line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
