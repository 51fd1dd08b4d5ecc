"""Argument types shared by the verbs."""
from __future__ import annotations

import argparse


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def location(value: str):
    """A folder argument: an s3:// URL stays a string (a Path would fold its '//'), anything else is a Path."""
    from pathlib import Path

    return value if value.startswith("s3://") else Path(value)


def add_s3_endpoint(p) -> None:
    """--s3-endpoint, for every command that takes an s3:// folder."""
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="endpoint of an S3-compatible store (MinIO, Ceph, R2...; default $AWS_ENDPOINT_URL_S3 or "
                        "$AWS_ENDPOINT_URL, else AWS); credentials and region come from the AWS variables/files")
