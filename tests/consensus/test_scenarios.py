"""Runs every Raft scenario script in ``testdata/`` (QKV_REWRITE=1 rewrites them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from interaction import Env

from datadriven import files, run_file

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", files(TESTDATA), ids=lambda p: p.name)
def test_scenario(path: Path) -> None:
    run_file(path, Env().handle)
