"""Flags, the TOML file, and the data directory's identity check."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorumkv.errors import ServerError
from quorumkv.server._config import (
    check_identity,
    cluster_id,
    parse_config,
    read_identity,
    write_identity,
)
from quorumkv.shard import PlacementConfig

PEERS = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--id", "1", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:7001", *extra]


def test_flags(tmp_path: Path) -> None:
    cfg = parse_config(_args(tmp_path, "--peers", PEERS, "--http", "127.0.0.1:8001"))
    assert cfg.node_id == 1
    assert cfg.peers == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    assert cfg.http == "127.0.0.1:8001"
    assert cfg.election_timeout_s == pytest.approx(0.5)
    assert cfg.cluster_id == cluster_id("quorumkv", cfg.peers)


def test_single_node_without_peers(tmp_path: Path) -> None:
    assert parse_config(_args(tmp_path)).peers == {1: "127.0.0.1:7001"}


def test_toml_file_and_flags_win(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text(
        f'id = 2\ndata-dir = "{tmp_path}"\nlisten = "127.0.0.1:7002"\ntick_ms = 20\n'
        '[peers]\n1 = "127.0.0.1:7001"\n2 = "127.0.0.1:7002"\n'
    )
    cfg = parse_config(["--config", str(conf), "--tick-ms", "30"])
    assert (cfg.node_id, cfg.tick_ms) == (2, 30)
    assert cfg.peers == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--peers", "1=127.0.0.1:7001,x=1.2.3.4:5"], "ID=HOST:PORT"),
        (["--peers", "1=127.0.0.1:7001,1=127.0.0.1:7002"], "listed twice"),
        (["--peers", "2=127.0.0.1:7002"], "does not list this node"),
        (["--peers", "1=127.0.0.1"], "not host:port"),
        (["--http", "nowhere"], "not host:port"),
        (["--listen", "0.0.0.0:7001"], "wildcard address cannot be dialled"),
        (["--tick-ms", "0"], "must be positive"),
        (["--election-ticks", "1"], "at least 2"),
        (["--log-level", "loud"], "log-level"),
    ],
)
def test_bad_flags_say_what_is_wrong(tmp_path: Path, extra: list[str], match: str) -> None:
    with pytest.raises(ServerError, match=match):
        parse_config(_args(tmp_path, *extra))


def test_missing_flags_are_named(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="missing --data-dir, --listen"):
        parse_config(["--id", "1"])


@pytest.mark.parametrize(
    ("text", "match"),
    [("colour = 1\n", "unknown option"), ("id = 'one'\n", "must be int"), ("id = \n", "TOML")],
)
def test_bad_toml(tmp_path: Path, text: str, match: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    with pytest.raises(ServerError, match=match):
        parse_config(["--config", str(conf)])


def test_identity_refuses_another_cluster_or_node(tmp_path: Path) -> None:
    cfg = parse_config(_args(tmp_path, "--peers", PEERS))
    write_identity(tmp_path, 1, cfg.cluster_id)
    doc = read_identity(tmp_path)
    assert doc is not None
    assert check_identity(cfg, doc) == cfg.cluster_id
    other = parse_config(_args(tmp_path, "--peers", PEERS, "--cluster-token", "other"))
    with pytest.raises(ServerError, match=r"belongs to cluster .* fresh --data-dir"):
        check_identity(other, doc)
    two = parse_config(
        ["--id", "2", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:7002", "--peers", PEERS]
    )
    with pytest.raises(ServerError, match="belongs to node 1, not node 2"):
        check_identity(two, doc)


def test_identity_file_damage_is_reported(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(ServerError, match="unreadable"):
        read_identity(tmp_path)


def test_split_bytes_takes_sizes_with_units_and_defaults_to_the_planners(tmp_path: Path) -> None:
    assert parse_config(_args(tmp_path)).split_bytes == PlacementConfig().split_bytes == 64 << 20
    for text, want in (("65536", 65536), ("512KiB", 512 << 10), ("64MiB", 64 << 20),
                       ("2g", 2 << 30), ("100 b", 100)):  # fmt: skip
        assert parse_config(_args(tmp_path, "--split-bytes", text)).split_bytes == want
    conf = tmp_path / "node.toml"
    conf.write_text(f'id = 1\ndata-dir = "{tmp_path}"\nlisten = "127.0.0.1:7001"\n'
                    'split-bytes = "1MiB"\n')  # fmt: skip
    assert parse_config(["--config", str(conf)]).split_bytes == 1 << 20
    conf.write_text(f'id = 1\ndata-dir = "{tmp_path}"\nlisten = "127.0.0.1:7001"\n'
                    "split_bytes = 4096\n")  # fmt: skip
    assert parse_config(["--config", str(conf)]).split_bytes == 4096


def test_bad_split_bytes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ServerError, match="--split-bytes must be positive"):
        parse_config(_args(tmp_path, "--split-bytes", "0"))
    for bad in ("64XB", "MiB", "-5", "1.5MiB"):
        with pytest.raises(SystemExit):
            parse_config(_args(tmp_path, "--split-bytes", bad))
        assert "is not a size in bytes" in capsys.readouterr().err
    conf = tmp_path / "node.toml"
    conf.write_text(f'id = 1\ndata-dir = "{tmp_path}"\nlisten = "127.0.0.1:7001"\n'
                    'split-bytes = "lots"\n')  # fmt: skip
    with pytest.raises(ServerError, match="split-bytes: 'lots' is not a size in bytes"):
        parse_config(["--config", str(conf)])
