"""The ``funloader`` command line: ``funloader <command> [options]``.

Each command lives in its own module exposing ``main(argv) -> int``; this file only dispatches, and
imports a command's module when that command runs (``funloader --version`` stays instant).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ._version import __version__
from .errors import FunloaderError

#: command -> (module, function, one-line help)
COMMANDS = {
    "bench": ("funloader.bench.__main__", "main", "side-by-side decode / loader / model throughput report"),
    "info": ("funloader.info", "main", "print the header, sampling and coefficient shapes of JPEG files"),
    "prepare": ("funloader.preparation", "main", "turn an image folder into a FUN-ready JPEG dataset"),
    "stats": ("funloader.stats", "main", "compute the 192 per-channel means/stds of a dataset"),
    "train": ("funloader.train", "main_train", "train a FUN model from raw JPEGs"),
    "eval": ("funloader.train", "main_eval", "evaluate a checkpoint (top-1/top-5, channel sweep)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funloader",
        description="JPEG-native data loading for PyTorch (DCT coefficients for FUN models).",
        epilog="Run 'funloader <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"funloader {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command",
                        help="; ".join(f"{name}: {COMMANDS[name][2]}" for name in sorted(COMMANDS)))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.parse_args([command])  # prints the usage error and exits 2
    module_name, function_name, _ = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(function(rest) or 0)
    except KeyboardInterrupt:
        print("\nfunloader: interrupted", file=sys.stderr)
        return 130
    except FunloaderError as error:  # a named bad input: one line, not a traceback
        print(f"funloader {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
