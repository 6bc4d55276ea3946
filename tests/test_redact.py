"""A password in a storage URL is never written or printed: not in run.json's command, not in an error line."""

from __future__ import annotations

import pytest

from dac_search.commands.search import add_parser, config_from_args
from dac_search.errors import ConfigError
from dac_search.redact import mask_command, mask_url
from dac_search.search.identity import SearchIdentity
from dac_search.search.study import open_study

SECRET = "s3cr:et"


@pytest.mark.parametrize("url,masked", [
    (f"postgresql://alice:{SECRET}@db.example/dac", "postgresql://alice:***@db.example/dac"),
    (f"postgresql+psycopg://alice:{SECRET}@db:5432/dac?sslmode=require", "postgresql+psycopg://alice:***@db:5432/dac?sslmode=require"),
    ("postgresql://alice@db/dac", "postgresql://alice@db/dac"),  # no password: nothing to mask
    ("sqlite:////tmp/run/study.db", "sqlite:////tmp/run/study.db"),
    ("reports/run", "reports/run"),
])
def test_urls_are_masked_and_nothing_else_changes(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_recorded_command_carries_no_password() -> None:
    argv = ["dac-search", "--model", "m", "--storage", f"postgresql://alice:{SECRET}@db/dac", "--out", "a b"]
    command = mask_command(argv)
    assert SECRET not in command and "postgresql://alice:***@db/dac" in command and "'a b'" in command


def test_the_error_for_a_bad_storage_url_names_it_without_its_password() -> None:
    with pytest.raises(ConfigError) as raised:
        open_study(f"nosuchdb://alice:{SECRET}@127.0.0.1:1/dac", 0, SearchIdentity("test", ()))
    assert SECRET not in str(raised.value) and "nosuchdb://alice:***@127.0.0.1:1/dac" in str(raised.value)


def test_the_search_records_its_command_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import sys

    argv = ["--model", "cifar10-resnet20", "--budget", "50%flops", "--device", "none",
            "--storage", f"postgresql://alice:{SECRET}@db/dac"]
    monkeypatch.setattr(sys, "argv", ["dac-search", *argv])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(parser.parse_args(["search", *argv]))
    assert SECRET not in config.command and config.storage.endswith(f"{SECRET}@db/dac")
