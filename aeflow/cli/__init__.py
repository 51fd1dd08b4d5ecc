"""The `aeflow` console script: one sub-command per verb; each area adds its verbs from its own module.

    models.py  train, export, models (list, show, alias, ...)   jobs.py  denoise, upscale, embed, index, search, dedup
    flows.py   demo, flow runs, serve (Prefect)                api.py   api (Ray Serve)

Each module defines add_commands(subparsers) and imports nothing heavy at the top, so `aeflow --help` stays fast
and a job verb never imports torch. Nothing imports this package (tests/test_style.py checks the layers).
"""
from __future__ import annotations

import argparse
import logging
import sys

from aeflow.cli import api, flows, jobs, models
from aeflow.errors import UsageError
from aeflow.storage import StorageError

COMMAND_MODULES = (models, jobs, flows, api)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="aeflow", description="Autoencoders as a production pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMAND_MODULES:
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, map known errors to exit codes."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except (UsageError, FileNotFoundError, NotADirectoryError) as exc:  # every store, data, config error
        print(f"aeflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:  # S3 still failing after its retries: nothing half-written, a rerun resumes
        print(f"aeflow: error: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("aeflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)
