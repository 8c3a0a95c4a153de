"""``visattn export --checkpoint C --format onnx|torch-export --out DIR``: graphs for deployment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visattn.cli.common import CliError, HelpFormatter

__all__ = ["register", "run_export"]


def register(commands: dict) -> None:
    export = commands["root"].add_parser(
        "export", help="export a checkpoint to ONNX or torch.export graphs for deployment",
        description="Write the model's graphs and visattn.json (task, classes or vocabulary, image size, "
                    "normalisation, grid, exporter, the checkpoint's sha256) to a new folder. Classifier and "
                    "detector: one graph; captioner: 'encoder' (once per image) and 'step' (one decoding step of "
                    "B images x k beams), so beam search runs outside the graph. Run ONNX exports without PyTorch: "
                    "python -m visattn.runtime DIR IMAGE...",
        formatter_class=HelpFormatter)
    export.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by visattn")
    export.add_argument("--format", choices=["onnx", "torch-export"], default="onnx",
                        help="onnx: .onnx graphs for ONNX Runtime; torch-export: .pt2 ExportedPrograms")
    export.add_argument("--out", type=Path, required=True, help="the folder to create")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        from visattn.export import export_checkpoint

        out = export_checkpoint(args.checkpoint, args.out, format=args.format, force=args.force)
    except ImportError as err:
        raise CliError(f"visattn export --format {args.format} needs the 'export' extra "
                       f"(pip install 'visattn[export]'): {err}") from None
    meta = json.loads((out / "visattn.json").read_text())
    files = ", ".join(graph["file"] for graph in meta["graphs"].values())
    print(f"{out}: {meta['task']} model {meta['model']!r} -> {files} ({meta['graph_format']}), visattn.json")
    return 0
