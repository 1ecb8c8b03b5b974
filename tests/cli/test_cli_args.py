"""``qkv``'s command line without a cluster: parsing, usage errors, error lines."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from quorumkv.cli import build_parser, main
from quorumkv.cli._common import DEFAULT_ENDPOINTS, UsageError, endpoints, one_line
from quorumkv.cli._up import _ports
from quorumkv.errors import UnavailableError
from quorumkv.local import free_ports
from quorumkv.local._spec import new_spec, write_spec


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qkv: error: "), err
    return lines[0]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("sim", "up", "server", "put", "get", "del", "range", "txn", "status", "member"):
        assert f"    {cmd}" in out


def test_txn_help_documents_the_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["txn", "--help"])
    out = capsys.readouterr().out
    assert "--if 'TARGET(KEY) OP VALUE'" in out
    assert "del --prefix KEY" in out
    assert "qkv txn --if 'value(stock) = 1'" in out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["put", "k"], "the following arguments are required: VALUE"),
        (["range", "k", "--limit", "-1"], "argument --limit: -1 is negative"),
        (["member", "add", "x", "h:1"], "argument ID: invalid int value: 'x'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_argparse_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert error in line and line.endswith("--help')")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["txn", "--if", "bogus"], "--if 'bogus': expected TARGET(KEY) OP VALUE"),
        (["txn"], "an empty transaction"),
        (["txn", "--then", "put k"], "operation 'put k': expected 'put KEY VALUE'"),
        (["range", "a", "b", "--prefix"], "give END or --prefix, not both"),
        (["range", ""], "KEY is empty; use --prefix '' for every key"),
        (["get", "k", "--timeout", "0"], "--timeout must be positive"),
        (["get", "k", "--endpoints", " , "], "--endpoints names no endpoint"),
        (["up", "--nodes", "0"], "--nodes must be at least 1"),
    ],
)
def test_usage_errors_found_after_parsing_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    assert main(argv) == 2
    assert error in one_error_line(capsys.readouterr().err)


def test_an_unreachable_cluster_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_ports("127.0.0.1", 1)[0]  # nothing listens there
    assert main(["get", "k", "--endpoints", f"127.0.0.1:{port}", "--timeout", "0.3"]) == 1
    assert f"127.0.0.1:{port}" in one_error_line(capsys.readouterr().err)


def test_qkv_up_on_a_foreign_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "data.db").write_text("not ours")
    assert main(["up", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not empty and holds no cluster.json" in one_error_line(err)


def test_endpoints_come_from_the_flag_then_the_environment_then_qkv_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*argv: str) -> argparse.Namespace:
        return build_parser().parse_args(["get", "k", *argv])

    monkeypatch.delenv("QKV_ENDPOINTS", raising=False)
    assert endpoints(parsed()) == DEFAULT_ENDPOINTS.split(",")
    monkeypatch.setenv("QKV_ENDPOINTS", "h:1, h:2")
    assert endpoints(parsed()) == ["h:1", "h:2"]
    assert endpoints(parsed("--endpoints", "x:9")) == ["x:9"]


def test_qkv_up_ports(tmp_path: Path) -> None:
    def ports(*argv: str) -> tuple[int | None, int | None]:
        return _ports(build_parser().parse_args(["up", "--data-dir", str(tmp_path), *argv]))

    assert ports() == (7001, None)
    assert ports("--base-port", "9001", "--http-base-port", "9501") == (9001, 9501)
    assert ports("--base-port", "0") == (None, None)  # the kernel picks
    with pytest.raises(UsageError, match="--http-base-port needs a non-zero --base-port"):
        ports("--base-port", "0", "--http-base-port", "9501")
    write_spec(tmp_path, new_spec("127.0.0.1", 3, 7101, None))
    assert ports() == (None, None)  # an existing cluster keeps its own
    assert ports("--base-port", "7101") == (7101, None)  # LocalCluster checks it matches
    with pytest.raises(UsageError, match="holds a cluster, which keeps its ports"):
        ports("--http-base-port", "9501")


def test_os_errors_show_their_reason_only() -> None:
    assert one_line(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert one_line(FileNotFoundError(2, "No such file", "x.toml")) == "No such file (x.toml)"
    assert one_line(UnavailableError("no node answered\nmore detail")) == "no node answered"


def test_qkv_server_hands_every_argument_to_the_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["server", "--help"])
    assert e.value.code == 0
    assert "usage: qkv server" in capsys.readouterr().out
    assert main(["server", "--id", "1"]) == 2  # the server's own verdict: missing flags
    assert "missing --data-dir, --listen" in capsys.readouterr().err


def test_the_cli_does_not_import_the_server() -> None:
    code = "import sys, quorumkv.cli; print(sorted(m for m in sys.modules if 'server' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
