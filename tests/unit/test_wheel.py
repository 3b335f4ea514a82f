"""The package as an operator installs it: a wheel built from pyproject.toml, installed in a fresh
venv and run from a directory outside the repository, with no ``source/`` on ``sys.path``.

The fresh venv gets the package without its dependencies (``--no-deps``, no index needed); the
runtime libraries are borrowed from this interpreter's site-packages through a ``.pth`` line. A
plain path line does not run that directory's own ``.pth`` files, so the project's editable
install there (which points at ``source/``) stays inactive, and the venv's own site-packages,
holding the wheel, comes first on ``sys.path`` anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a wheel build and a venv: a few seconds

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this checkout installed; returns its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    project = base / "project"  # a copy: building in place would leave build/ and *.egg-info behind
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "source", project / "source", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # The interpreter's own setuptools (requirements-dev.txt): no index is needed to build.
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        base / "dist",
        "./project",
        cwd=base,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((base / "dist").glob("dlt_db_sync-*.whl"))
    assert len(wheels) == 1, built.stdout
    venv = base / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    added = run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheels[0], cwd=base
    )
    assert added.returncode == 0, added.stdout + added.stderr
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=base).stdout.strip())
    libraries = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_runtime_libraries.pth").write_text("\n".join(sorted(libraries)) + "\n")
    return venv / "bin"


def test_wheel_holds_the_package_and_the_entry_point_only(installed: Path) -> None:
    wheel = next((installed.parent.parent / "dist").glob("dlt_db_sync-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "db_pipeline.py" in names
    for module in (
        "config/tables.py",
        "monitoring/run_state.py",
        "monitoring/services.py",
        "schema_management/model.py",
    ):
        assert f"dlt_db_sync/{module}" in names, module
    assert not [n for n in names if n.startswith(("tests/", "bench/", "source/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dlt-db-sync = db_pipeline:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_console_script_help_runs_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    result = run(installed / "dlt-db-sync", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and "--once" in result.stdout and "--verify" in result.stdout


def test_package_imports_from_the_venv_not_from_source(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import sys, dlt_db_sync, db_pipeline; "
        "print(dlt_db_sync.__file__); print(db_pipeline.__file__); print('\\n'.join(sys.path))"
    )
    result = run(installed / "python", "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package, entry, *path = result.stdout.splitlines()
    venv = str(installed.parent)
    assert package.startswith(venv) and entry.startswith(venv), (package, entry)
    assert not [p for p in path if p.startswith(str(ROOT / "source"))], path
