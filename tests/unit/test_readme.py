"""The README documents every variable the daemon reads and the two commands CI relies on."""

from __future__ import annotations

from conftest import ROOT
from dlt_db_sync.config import settings as config


def test_readme_documents_every_variable() -> None:
    text = (ROOT / "README.md").read_text()
    missing = [name for name in config.known_variables() if f"`{name}`" not in text]
    assert not missing, f"README.md lacks: {missing}"


def test_readme_shows_the_two_commands_and_ci_runs_the_test_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
