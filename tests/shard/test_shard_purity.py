"""The shard package stays pure: no I/O, clock, randomness or threads, nothing from the
layers above it, and every module says what it owns and what it must never do."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import quorumkv.shard

PACKAGE = Path(quorumkv.shard.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
FORBIDDEN = {
    "asyncio",
    "os",
    "random",
    "selectors",
    "socket",
    "subprocess",
    "threading",
    "time",
    "datetime",
    "quorumkv.server",
    "quorumkv.client",
    "quorumkv.sim",
    "quorumkv.local",
    "quorumkv.cli",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_package_has_its_modules() -> None:
    assert {p.name for p in MODULES} >= {
        "__init__.py",
        "_range.py",
        "_directory.py",
        "_routing.py",
        "_placement.py",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_forbidden_imports(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_every_module_says_what_it_must_never_do(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path.name} has no docstring"
    assert "must never" in doc, f"{path.name}'s docstring does not say what it must never do"


def test_the_public_surface_is_exported() -> None:
    for name in quorumkv.shard.__all__:
        assert hasattr(quorumkv.shard, name), name
