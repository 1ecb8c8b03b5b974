import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Make test helpers such as `datadriven` importable from tests in subdirectories.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Any]]:
    """Start real local clusters (``LocalCluster``, loopback only); every process they
    started is stopped by pid at the end of the test, whatever happened."""
    from quorumkv.local import LocalCluster

    started: list[LocalCluster] = []

    def make(nodes: int = 3, **kwargs: Any) -> LocalCluster:
        c = LocalCluster(nodes, **kwargs)
        started.append(c)
        c.start(timeout=60)
        return c

    yield make
    for c in started:
        c.stop()
