"""The `cifarlab` command line: parses flags and calls into the library, nothing more.

One module per group of commands (train, inference, experiments, info); each adds its
subcommands' parsers and holds the functions they call.
"""

from __future__ import annotations

import argparse
import sys

from cifarlab import __version__
from cifarlab.cli.experiments import add_compare, add_report, add_runs, add_sweep
from cifarlab.cli.inference import add_calibrate, add_evaluate, add_export, add_predict, add_serve
from cifarlab.cli.info import add_info, add_models, add_presets
from cifarlab.cli.train import FIELD_HELP, add_config_flags, add_train, config_from_args
from cifarlab.errors import CifarlabError

__all__ = ["FIELD_HELP", "add_config_flags", "build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarlab", description="Train, evaluate and use CIFAR-10 classifiers.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        add_train,
        add_evaluate,
        add_calibrate,
        add_info,
        add_presets,
        add_models,
        add_report,
        add_runs,
        add_compare,
        add_sweep,
        add_predict,
        add_export,
        add_serve,
    )
    for add in commands:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CifarlabError as e:  # a user mistake: one line; anything else is a bug: traceback
        # one write per line: several torchrun processes share stderr and must not interleave
        sys.stderr.write(f"cifarlab {args.command}: error: {e}\n")
        sys.stderr.flush()
        return 1
    except KeyboardInterrupt as e:
        command = getattr(e, "resume_command", None)  # a training says how to go on
        print(f"cifarlab {args.command}: interrupted" + (f"; resume it with: {command}" if command else ""), file=sys.stderr)
        return 130
