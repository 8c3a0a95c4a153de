"""The ``visattn`` command line: thin parsers that build configs and call the library.

Exit codes: 0 success, 2 usage error (argparse or :class:`UsageError`), 1 failure with a one-line message.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
from typing import Callable, Sequence

from visattn.checkpoint import CheckpointError
from visattn.distributed import cleanup
from visattn.cli.common import (
    CliError, HelpFormatter, UsageError, add_device_option, add_strict_option, set_threads, setup_logging,
)

__all__ = ["main", "build_parser"]

# Each module exposes register(commands); the order is the order of --help.
COMMAND_MODULES = ("visattn.cli.data", "visattn.cli.classify", "visattn.cli.caption", "visattn.cli.detect",
                   "visattn.cli.demo", "visattn.cli.bench", "visattn.cli.serve", "visattn.cli.export")

log = logging.getLogger("visattn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visattn",
        description="Visual attention that is correct, fast and visible: train, evaluate and look at "
                    "attention classifiers, Show-Attend-Tell captioners and DETR-style detectors.",
        epilog="Run 'visattn COMMAND --help' for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # every sub-command's options show their defaults once (HelpFormatter skips helps that say it already)
    sub_parser = functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter)
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=sub_parser)
    train = root.add_parser("train", help="train a model (classify, caption, detect)",
                            description="Train a model on procedural data or your own data set.")
    train_tasks = train.add_subparsers(dest="task", metavar="TASK", required=True, parser_class=sub_parser)
    evaluate = root.add_parser(
        "eval", help="evaluate a checkpoint",
        description="Evaluate a checkpoint on held-out data; the task is read from the checkpoint. "
                    "Without --data-dir/--data-file, procedural scenes of the checkpoint's task are used.")
    evaluate.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by visattn")
    evaluate.add_argument("--num-samples", type=int, default=1000, help="procedural test images (default: 1000)")
    evaluate.add_argument("--data-seed", type=int, default=12345,
                          help="seed of the procedural test set; differs from training seeds (default: 12345)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    evaluate.add_argument("--json-out", default=None, help="also write the metrics to this JSON file")
    add_strict_option(evaluate)
    add_device_option(evaluate)
    eval_handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    evaluate.set_defaults(handler=lambda args: _dispatch_eval(args, eval_handlers))
    commands = {"root": root, "train": train_tasks, "eval": evaluate, "eval_handlers": eval_handlers}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def _dispatch_eval(args: argparse.Namespace, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> int:
    from visattn.checkpoint import read_checkpoint

    task = read_checkpoint(args.checkpoint).task
    if task not in handlers:
        raise CliError(f"{args.checkpoint}: no evaluation for task {task!r} (known: {', '.join(sorted(handlers))})")
    return handlers[task](args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args)
    try:
        code = int(args.handler(args) or 0)
        cleanup()  # leave the torchrun process group cleanly (a no-op in one process)
        return code
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"visattn: error: {err}", file=sys.stderr)
        return 2
    except (CliError, CheckpointError, ValueError, FileNotFoundError, KeyError) as err:
        if args.verbose:
            log.exception("failed")
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        print(f"visattn: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("visattn: interrupted", file=sys.stderr)
        return 130


