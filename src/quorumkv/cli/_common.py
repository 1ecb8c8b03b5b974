"""What every ``qkv`` command shares: the parser class, client options, byte handling.

Errors: a usage error prints ``qkv: error: ...`` and exits 2 (``ArgumentParser.error``
and ``UsageError``); ``main`` turns any other ``QuorumKVError`` or ``OSError`` into one
line and exit 1. Nothing here prints a traceback or talks to a node by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from quorumkv.client import Client, check_read_from

DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
"""Where ``qkv up`` puts a 3-node cluster by default."""
ENDPOINTS_ENV = "QKV_ENDPOINTS"


class UsageError(Exception):
    """The command line asks for something that cannot be done as written (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors as one ``qkv: error:`` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"qkv: error: {message} (see '{self.prog} --help')\n")


def client_options() -> ArgumentParser:
    """A parent parser with ``--endpoints`` and ``--timeout``."""
    p = ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--endpoints",
        metavar="HOST:PORT,...",
        help=f"nodes to talk to (default: ${ENDPOINTS_ENV}, else {DEFAULT_ENDPOINTS}, "
        "where 'qkv up' puts its nodes)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long, retries included (default 10)",
    )
    return p


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def endpoints(args: argparse.Namespace) -> list[str]:
    text = args.endpoints or os.environ.get(ENDPOINTS_ENV) or DEFAULT_ENDPOINTS
    eps = [e.strip() for e in text.split(",") if e.strip()]
    if not eps:
        raise UsageError("--endpoints names no endpoint")
    return eps


def connect(args: argparse.Namespace) -> Client:
    """A client on the command's endpoints; the caller closes it."""
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout:g}")
    read_from = check_read_from(getattr(args, "read_from", "leader"))
    return Client(endpoints(args), timeout=args.timeout, read_from=read_from)


def arg_bytes(text: str) -> bytes:
    """A command-line argument as the bytes the user typed (even if not UTF-8)."""
    return os.fsencode(text)


def show(data: bytes) -> str:
    """Bytes for the terminal: the text if they are UTF-8, else their ``repr``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)


def one_line(error: BaseException) -> str:
    """An exception as the one line ``qkv: error:`` shows."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        text = f"{error.strerror}{where}"
    return text.splitlines()[0] if text else type(error).__name__


def fail(message: str) -> int:
    """Print ``qkv: error: message`` to stderr; the exit status 1."""
    print(f"qkv: error: {message}", file=sys.stderr)
    return 1
