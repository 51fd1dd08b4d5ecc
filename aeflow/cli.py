"""The `aeflow` console script: one sub-command per verb; each area adds its verbs from its own module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that add verbs: each defines add_commands(subparsers). Imported lazily by name so that
# `aeflow --help` stays fast and a job verb never imports torch.
COMMAND_MODULES = ("aeflow.cli_models", "aeflow.cli_jobs", "aeflow.cli_flows", "aeflow.cli_api")

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 2, 3


class UsageError(Exception):
    """A configuration or usage problem: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="aeflow", description="Autoencoders as a production pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area is not built yet
                continue
            raise
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, map known errors to exit codes."""
    from aeflow.imageio import ImageDecodeError
    from aeflow.store import StoreError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except (UsageError, StoreError, ImageDecodeError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"aeflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aeflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
