"""``ronan report`` / ``ronan export`` read: a file that is not a results database stays as it was."""

from __future__ import annotations

import os
import re

import pytest
from click.testing import CliRunner

from ronan_jax.report import pick_run, write_report
from ronan_jax.results.store import StoreError
from tests.hostile.test_store_readonly import KINDS, fingerprint, hostile_files, read_only_media

__all__ = ["read_only_media"]  # the fixture, shared


@pytest.mark.parametrize("kind", KINDS)
def test_reporting_a_non_results_file_changes_nothing(tmp_path, kind):
    path = hostile_files(tmp_path)[kind]
    before = fingerprint(path)
    with pytest.raises(StoreError, match=re.escape(path.name)):
        write_report(path, tmp_path / "out" / "r.html")
    with pytest.raises(StoreError, match=re.escape(path.name)):
        pick_run(path)
    assert fingerprint(path) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("kind", ["foreign", "text", "empty"])
def test_the_read_only_commands_refuse_a_non_results_file_unchanged(tmp_path, kind, command):
    from ronan_jax.cli.app import cli

    path = hostile_files(tmp_path)[kind]
    before = fingerprint(path)
    result = CliRunner().invoke(cli, [command, str(path), "-o", str(tmp_path / "out.x")])
    assert result.exit_code == 2, result.output
    assert "not a results database" in result.output or "empty" in result.output
    assert fingerprint(path) == before


def test_a_database_on_read_only_media_is_reported_and_changed_in_nothing(read_only_media, tmp_path):
    db, _ = read_only_media
    before = fingerprint(db)
    out, n = write_report(db, tmp_path / "report.html")
    assert n == 3 and os.path.getsize(out) > 0
    assert fingerprint(db) == before
