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


def test_readme_layout_names_every_module_in_its_room() -> None:
    """The "Development" table (room -> modules) matches the package, so a newcomer can trust it."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("## Development", 1)[1]
    package = ROOT / "source" / "dlt_db_sync"
    documented: set[str] = set()
    for room, modules in re.findall(r"^\| `([\w./]+)` \| ([^|]*) \|", section, flags=re.M):
        if room.endswith(".py"):
            documented.add(room[:-3])
            continue
        documented.update(f"{room.rstrip('/')}/{name}" for name in re.findall(r"`([\w/]+)`", modules))
    actual = {
        str(path.relative_to(package).with_suffix(""))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    assert actual - documented == set(), "modules missing from README's Development table"
    assert documented - actual == set(), "README's Development table names modules that do not exist"
