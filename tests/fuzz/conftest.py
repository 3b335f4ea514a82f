"""The fuzzer's own server pair (its modules are on sys.path through tests/conftest.py)."""

from __future__ import annotations

import pytest
from fuzz_run import FuzzPair


@pytest.fixture(scope="session")
def fuzz_pair(server_factory) -> FuzzPair:  # noqa: ANN001 - the session ServerFactory of tests/conftest.py
    """Source and target with max_allowed_packet=1M (blobs over half of it are cheap to make) and
    different fixed time zones; started once per session from the shared server factory."""
    source = server_factory.start("fuzz-source", ["--max-allowed-packet=1M", "--default-time-zone=+03:00"])
    target = server_factory.start("fuzz-target", ["--max-allowed-packet=1M", "--default-time-zone=-08:00"])
    return FuzzPair(source, target)
