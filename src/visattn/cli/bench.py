"""``visattn bench caption-train|beam|cache|data|train-step``: the speed benchmarks of a source checkout.

The benchmarks measure visattn side by side with a textbook reference implementation that lives in the
repository's ``benchmarks/`` folder, not in the installed package, so this command runs the script from a
checkout: the ``benchmarks/`` folder next to the package's source tree (an editable install), or else the
one in the current directory. Everything after the benchmark's name goes to the script
(``visattn bench beam --help`` lists its options); it prints its JSON report on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from visattn.cli.common import CliError

__all__ = ["register", "BENCHMARKS", "find_benchmarks", "run_bench"]

# command name -> script in benchmarks/
BENCHMARKS = {"caption-train": "caption_train", "beam": "beam", "cache": "cache", "data": "data_pipeline",
              "train-step": "train_step", "serve": "serve", "export": "export"}


def register(commands: dict) -> None:
    bench = commands["root"].add_parser(
        "bench", help="speed benchmarks against the textbook implementation (JSON out; needs a source checkout)",
        description="Speed benchmarks, measured side by side with a textbook reference in the same run: "
                    "caption-train (one training step), beam (batched beam search), cache (epoch from the "
                    "feature cache), data (input pipeline), train-step (each task's engine step: eager, "
                    "compiled, host syncs), serve (visattn serve over HTTP vs the Predictor), export "
                    "(ONNX Runtime vs eager vs torch.export). Runs benchmarks/<name>.py of a source checkout; "
                    "'visattn bench NAME --help' lists a benchmark's options.")
    bench.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark script")
    bench.set_defaults(handler=run_bench)


def _candidates() -> list[Path]:
    """Where a checkout's benchmarks/ may be: beside the package's src/ tree, then the current directory."""
    package_root = Path(__file__).resolve().parents[3]  # src/visattn/cli/bench.py -> the repository root
    return [package_root / "benchmarks", Path.cwd() / "benchmarks"]


def find_benchmarks(script: str) -> Path:
    """The benchmarks/ folder holding ``script``.py and the reference implementation.

    Raises:
        CliError: no such folder (e.g. visattn installed from a wheel, run outside a checkout).
    """
    candidates = _candidates()
    for folder in candidates:
        if (folder / f"{script}.py").is_file() and (folder / "reference_sat.py").is_file():
            return folder
    looked = ", ".join(str(folder) for folder in dict.fromkeys(candidates))
    raise CliError(f"visattn bench runs the benchmark scripts of a source checkout, and found no benchmarks/"
                   f"{script}.py (looked in {looked}); run it from a clone of the visattn repository")


def run_bench(args: argparse.Namespace) -> int:
    script = BENCHMARKS[args.benchmark]
    folder = find_benchmarks(script)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the scripts import their siblings (_timing, reference_sat)
    module = importlib.import_module(script)
    try:
        return int(module.main(list(args.options)) or 0)
    except SystemExit as done:  # argparse inside the script: --help (0) or a usage error (2)
        return done.code if isinstance(done.code, int) else 1
