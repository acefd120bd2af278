"""`cistern`'s dispatcher: which commands take the bulk-data malloc tuning."""

import pytest

from cistern.blockstore import tuning
from cistern.cli import main as cli_main


@pytest.fixture
def tuned(monkeypatch):
    calls = []
    monkeypatch.setattr(tuning, "tune_malloc", lambda: calls.append(1) or True)
    return calls


def test_a_data_moving_client_command_tunes_malloc_before_it_runs(tuned, tmp_path, capsys):
    # No cluster at that path: the command fails with one line, after the tuning.
    code = cli_main.main(["fs", "--cluster", str(tmp_path / "missing.json"), "cat", "/x"])
    assert code == cli_main.EXIT_FAILED
    assert tuned == [1]
    assert capsys.readouterr().err.startswith("cistern fs: ")


def test_a_metadata_command_leaves_the_allocator_alone(tuned, tmp_path):
    cli_main.main(["status", "--cluster", str(tmp_path / "missing.json")])
    assert tuned == []
