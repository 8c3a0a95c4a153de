"""Every command's --help is readable: each default shown once, no "(default: None)" noise."""

from __future__ import annotations

import argparse
import re

from visattn.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _commands(sub, f"{prefix}{name} ")


def test_every_help_shows_each_default_once():
    commands = dict(_commands(build_parser()))
    assert {"train classify", "train caption", "train detect", "eval", "predict", "caption", "detect",
            "demo"} <= set(commands)
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())  # unwrap the formatter's line breaks
        assert not re.search(r"\(default: [^()]*\)\s*\(default:", text), f"visattn {name} --help repeats a default"
        assert "(default: None)" not in text and "(default: False)" not in text, name
    assert "(default: 3)" in " ".join(commands["predict"].format_help().split())  # --top-k


def test_shared_train_options_reach_the_train_config(tmp_path):
    from visattn.cli.common import train_config_from_args

    args = build_parser().parse_args(["train", "classify", "--run-dir", str(tmp_path), "--tensorboard", "--strict",
                                      "--epochs", "2", "--dtype", "bf16"])
    config = train_config_from_args(args)
    assert config.tensorboard is True and config.epochs == 2 and config.dtype == "bf16" and args.strict is True
    assert train_config_from_args(build_parser().parse_args(["train", "detect", "--run-dir", "x"])).tensorboard is False
