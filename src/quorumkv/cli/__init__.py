"""``qkv``: the command-line tool. Thin: parse arguments, call the library, print.

=================  ==========================================================
command            module
=================  ==========================================================
sim                ``_sim``: the deterministic simulator
up, server         ``_up``: a local cluster in the foreground; one node
put get del range  ``_kv``: key-value commands through ``quorumkv.Client``
txn                ``_kv`` and ``_txn`` (its compact ``--if/--then/--else`` syntax)
status member      ``_admin``: the cluster's status table, membership, leadership,
leader ranges      a sharded cluster's ranges, an operator's split
split
torture            ``_torture``: fault injection on real processes, checked
bench compare      ``_bench``: quorumkv beside etcd and PySyncObj (imports
                   ``quorumkv.bench`` only when it runs)
=================  ==========================================================

``_render`` turns answers into text; ``_common`` holds the parser class and the client
options every command shares (``--endpoints``, default ``$QKV_ENDPOINTS`` or the
``qkv up`` addresses, and ``--timeout``).

Errors never show a traceback: a usage error prints ``qkv: error: ...`` and exits 2;
a ``QuorumKVError`` or ``OSError`` prints one such line and exits 1; Ctrl-C exits 130.
The CLI never imports the server except to run ``qkv server``.
"""

from __future__ import annotations

import argparse
import os
import sys

from quorumkv.cli import _admin, _bench, _kv, _sim, _torture, _up
from quorumkv.cli._common import ArgumentParser, UsageError, client_options, fail, one_line
from quorumkv.cli._sim import replay_command
from quorumkv.cli._sim import sim_overrides as _sim_overrides
from quorumkv.errors import QuorumKVError
from quorumkv.sim import run_many

# The simulator's names stay importable from here: tests patch ``run_many`` in place.
__all__ = ["_sim_overrides", "build_parser", "main", "replay_command", "run_many"]


def _cmd_sim(args: argparse.Namespace) -> int:
    # ``run_many`` is looked up here, in the package, so tests can patch it.
    return _sim.cmd_sim(args, run_many)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="qkv", description="quorumkv command-line tool")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sim.register(sub, _cmd_sim)
    _up.register(sub)
    common = client_options()
    _kv.register(sub, common)
    _admin.register(sub, common)
    _torture.register(sub)
    _bench.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["server"]:  # every further argument is the server's
            return _up.run_server(argv[1:])
        args = build_parser().parse_args(argv)
        rc: int = args.func(args)
    except UsageError as e:
        print(f"qkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qkv range ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (QuorumKVError, OSError) as e:
        return fail(one_line(e))
    return rc
