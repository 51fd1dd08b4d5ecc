"""Prefect defaults for aeflow (quiet, no telemetry, a patient temporary server), set before prefect is imported."""
from __future__ import annotations

import os
from pathlib import Path

# The temporary server needs about 20 s to start on a busy 2-core machine, so its 20 s default timeout fails
# under load.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_prefect_defaults(home: str | os.PathLike | None = None) -> None:
    """setdefault the Prefect environment; PREFECT_HOME defaults to ./.prefect (the Makefile's choice)."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(Path(home) if home else Path.cwd() / ".prefect"))
