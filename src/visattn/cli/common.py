"""Shared pieces of the command line: errors with exit codes, option groups, logging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from visattn.config import config_from_dict
from visattn.data.core import DataError, load_json, write_atomic
from visattn.engine import TrainConfig

__all__ = ["HelpFormatter", "UsageError", "CliError", "add_strict_option", "load_predictor", "add_train_options", "train_config_from_args", "load_json_config",
           "add_device_option", "report_metrics", "report_training", "setup_logging", "positive_int", "non_negative_int", "set_threads"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default, the option is
    required, or the default says nothing (None, or False for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, False):
            return text
        return super()._get_help_string(action) or text


class UsageError(Exception):
    """A mistake in the command line the parser could not see; exit code 2."""


class CliError(Exception):
    """The command could not be done (bad data, missing file, ...); exit code 1, one-line message."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU) (default: auto)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice)")


def add_strict_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The one bad-data flag of every command that reads data files: skip and report by default."""
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad record or unreadable image instead of skipping and reporting it")


def load_predictor(args: argparse.Namespace, task: str):
    """The :class:`visattn.Predictor` of ``--checkpoint`` on ``--device``, refusing another task's checkpoint."""
    from visattn.predictor import Predictor

    return Predictor.from_checkpoint(args.checkpoint, device=args.device, task=task,
                                     image_size=getattr(args, "image_size", None))


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def add_train_options(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """The engine's options (every :class:`TrainConfig` field), shared by ``train classify|caption|detect``."""
    d = defaults or TrainConfig()
    group = parser.add_argument_group("training")
    group.add_argument("--run-dir", type=Path, required=True,
                       help="output folder: metrics.jsonl, curves.png, best/last.safetensors")
    group.add_argument("--resume", type=Path, default=None,
                       help="continue exactly from a last.safetensors of an earlier run")
    group.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"(default: {d.epochs})")
    group.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"(default: {d.batch_size})")
    group.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of AdamW (default: {d.lr})")
    group.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay})")
    group.add_argument("--schedule", choices=["constant", "cosine", "step"], default=d.schedule,
                       help=f"learning-rate schedule after warm-up (default: {d.schedule})")
    group.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps,
                       help=f"linear warm-up steps (default: {d.warmup_steps})")
    group.add_argument("--grad-clip", type=float, default=d.grad_clip,
                       help=f"clip the gradient norm to this; 0 disables (default: {d.grad_clip})")
    group.add_argument("--early-stop", type=positive_int, default=d.early_stop_patience, dest="early_stop_patience",
                       help="stop after this many evaluations without improvement (default: off)")
    group.add_argument("--eval-every", type=positive_int, default=d.eval_every,
                       help=f"evaluate every N epochs (default: {d.eval_every})")
    group.add_argument("--seed", type=int, default=d.seed, help=f"seed of weights, data order, dropout (default: {d.seed})")
    group.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=d.dtype,
                       help="autocast precision; fp16 uses a gradient scaler on CUDA (default: fp32)")
    group.add_argument("--num-workers", type=non_negative_int, default=d.num_workers,
                       help=f"DataLoader worker processes (default: {d.num_workers})")
    group.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log scalars and attention figures to RUN_DIR/tensorboard (needs visattn[tensorboard])")
    add_device_option(parser)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    values["grad_clip"] = args.grad_clip or None
    values["progress"] = not args.no_progress
    try:
        return TrainConfig(**values)
    except ValueError as err:
        raise UsageError(str(err)) from err


def load_json_config(path: Path | None, cls: type, *, overrides: dict[str, Any] | None = None) -> Any:
    """A model config from a JSON file (unknown keys are an error naming the file), then CLI overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:  # not found, bytes that are not UTF-8 and broken JSON: one line naming the file, line and column
            data = load_json(path, what="config file")
        except DataError as err:
            raise CliError(str(err)) from err
        if not isinstance(data, dict):
            raise CliError(f"{path}: a config file holds one JSON object of {cls.__name__} fields, "
                           f"got a JSON {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return config_from_dict(cls, data, source=str(path) if path else "command line")
    except ValueError as err:
        raise CliError(str(err)) from err


def report_metrics(metrics: dict[str, Any], json_out: str | Path | None) -> int:
    """Print an evaluation's metrics as JSON (and write them to ``json_out``); the command's exit code."""
    text = json.dumps(metrics, indent=2)
    print(text)
    if json_out:
        write_atomic(json_out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 0


def report_training(result: dict[str, Any]) -> int:
    """Print a training run's one-line JSON summary (rank 0 only under torchrun); the command's exit code:
    0 when training completed or stopped early, 1 when it stopped on a non-finite loss."""
    from visattn.distributed import is_main

    if is_main():
        print(json.dumps({"best": result["best"], "stopped": result["stopped"], "run_dir": result["run_dir"]}))
    return 0 if result["stopped"] == "completed" or result["stopped"].startswith("early stop") else 1


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
