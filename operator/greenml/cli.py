"""`greenml` command line. Each subcommand lives in greenml/commands/<name>.py and
exposes ``register(subparsers)``; this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand modules, in help order
COMMANDS = ["run", "simulate", "crds", "lint", "estimate", "report", "agent"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenml", description="Carbon- and energy-aware ML workloads on Kubernetes.")
    from greenml import __version__

    parser.add_argument("--version", action="version", version=f"greenml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"greenml.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"greenml.commands.{name}":
                continue  # not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        return _broken_pipe()
    return code


def _broken_pipe() -> int:
    """The reader went away (``greenml estimate … | head``): one line, exit 2, and no
    second BrokenPipeError when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # stdout is not a real file (e.g. captured in tests)
        pass
    print("greenml: output closed before it was all written (broken pipe)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
