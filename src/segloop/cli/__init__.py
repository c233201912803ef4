"""Layer 5, command line: ``segloop <command> ...``.

Each command group lives in its own module exposing ``register(subparsers)``; every command
function takes the parsed ``argparse.Namespace`` and returns an exit code. Errors that a user
can fix are raised as `CommandError` (or one of the layers' own errors) and printed as one line
on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from segloop import __version__
from segloop.cli.common import CommandError, database_env, user_errors
from segloop.openmp import prefer_passive_openmp

# Modules that contribute sub-commands; a module that is absent (a layer not installed) is skipped.
COMMAND_MODULES = (
    "segloop.cli.data_commands",
    "segloop.cli.export_dataset_command",
    "segloop.cli.ml_commands",
    "segloop.cli.models_import_command",  # after ml_commands: adds `models import`
    "segloop.cli.serve_command",
    "segloop.cli.emulate_command",
    "segloop.cli.select_command",
    "segloop.cli.plan_command",
    "segloop.cli.db_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segloop",
        description="AI-assisted segmentation of 3D medical images: import, segment, correct, learn.",
    )
    parser.add_argument("--version", action="version", version=f"segloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prefer_passive_openmp()  # before any command imports torch (see its docstring)
    try:
        with user_errors(), database_env(getattr(args, "db", None)):
            code = args.func(args)
    except CommandError as exc:
        print(f"segloop {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"segloop {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(code or 0)


__all__ = ["CommandError", "build_parser", "main"]
