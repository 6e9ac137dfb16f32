"""The ``fromage-mini`` command line.

Each subcommand lives in the module that does the work; this file only wires them up and turns
user errors (:class:`FromageError`) into one clear line and a non-zero exit, with no traceback
unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import FromageError

# subcommand -> module that defines ``register(subparsers)``
COMMANDS = {
    "tour": "fromage_mini.tour",
    "train": "fromage_mini.train.loop",
    "data": "fromage_mini.data.cc3m",
    "eval": "fromage_mini.eval.cli",
    "chat": "fromage_mini.chat",
    "index": "fromage_mini.retrieval.build",
    "backbones": "fromage_mini.tools.gguf",
}


def _quiet_libraries():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fromage-mini", description="FROMAGe, small and readable.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FromageError as e:
        if args.debug:
            raise
        print(f"fromage-mini: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fromage-mini: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
