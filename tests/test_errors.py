"""aeflow/errors.py: every usage/configuration error derives from one base, which the CLI maps to exit code 2."""
from __future__ import annotations

import pytest

from aeflow.errors import UsageError


def _all_usage_errors():
    from aeflow.imageio import ImageDecodeError
    from aeflow.store import ModelIntegrityError, StoreError
    from models.data import DataError
    from pipeline.embeddings import EmbeddingsError
    from pipeline.index import IndexMismatchError
    from pipeline.predictor import JobConfigError
    from pipeline.writer import OutputSpaceError

    return [StoreError, ModelIntegrityError, ImageDecodeError, DataError, EmbeddingsError, IndexMismatchError,
            JobConfigError, OutputSpaceError]


@pytest.mark.parametrize("cls", _all_usage_errors(), ids=lambda c: c.__name__)
def test_each_configuration_error_is_a_usage_error(cls):
    assert issubclass(cls, UsageError)


@pytest.mark.parametrize("cls", _all_usage_errors(), ids=lambda c: c.__name__)
def test_the_cli_maps_each_to_exit_code_2_without_a_traceback(cls, capsys, monkeypatch):
    import aeflow.cli as cli

    def fail(args):
        raise cls("what to fix")

    parser = cli.build_parser()
    args = parser.parse_args(["models", "list"])
    monkeypatch.setattr(args, "func", fail)
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    assert cli.main([]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "aeflow: error: what to fix" in err and "Traceback" not in err


def test_the_flows_never_retry_a_usage_error():
    from flows.batch import _is_transient
    from models.data import DataError

    class _Failed:
        def result(self):
            raise DataError("empty folder")

    assert _is_transient(None, None, _Failed()) is False
