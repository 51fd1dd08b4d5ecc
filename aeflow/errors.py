"""aeflow's error hierarchy: one base for problems the user fixes (CLI exit code 2, never retried by a flow)."""
from __future__ import annotations


class UsageError(Exception):
    """A configuration or usage problem: printed without a traceback, exit code 2, not worth a retry.

    The store's, the data's, the embeddings', the image decoder's and the jobs' configuration errors derive
    from it, so the CLI maps them to an exit code in one place and the flows tell them from transient faults
    by class. Per-file problems inside a job (a bad image among good ones) fail only their row.
    """
