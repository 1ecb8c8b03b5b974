"""CPU per operation of the client and of the kv codec, in one process (not a test).

    python benchmarks/client_cpu.py                 # both parts, medians of 5 runs
    python benchmarks/client_cpu.py --part client   # only (a); --part codec: only (b)
    python benchmarks/client_cpu.py --runs 3 --seconds 2 --concurrency 256

(a) ``AsyncClient.put`` and ``.get`` pipelined at ``--concurrency`` closed-loop callers,
each as the load generator (``quorumkv.bench._load``) drives it: pick a random key,
call, record the latency. The client talks to a fake node on loopback that answers
every request at once with a fixed, valid result (a ``PutResponse``, or a
``RangeResponse`` with one 100-byte pair). The fake node runs in a child process of its
own, so ``time.process_time()`` of this process is the client's CPU alone; the node's
is read from /proc and printed apart. Both run on the standard asyncio loop, as the
generator does.

(b) The codec of one 100-byte put and one get, per call: building and encoding the
command (``encode_command(Command(...))``, what the client does), ``decode_command``
(what every replica does per entry), ``encode_result`` (what the leader answers with)
and ``decode_result`` (what the client reads).

Every figure is the median over ``--runs`` runs, in microseconds of CPU per operation
(for the codec also the minimum, the figure least disturbed by other load). Other load
on the machine moves CPU time per operation too (caches, a shared core): compare two
versions by alternating their runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import msgpack

from quorumkv.client import AsyncClient
from quorumkv.kv import (
    Command,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    _codec,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from quorumkv.net import OK, OP_READ, OP_WRITE, accept, encode

# What the client runs per put and get, where it exists (not before this benchmark).
encode_put: Callable[..., bytes] | None = getattr(_codec, "encode_put", None)
encode_get: Callable[..., bytes] | None = getattr(_codec, "encode_get", None)


KEY_FORMAT = b"bench/%07d"
VALUE = bytes(range(100))
_TICK = os.sysconf("SC_CLK_TCK")


# -- the fake node (child process) -----------------------------------------------------------


class _FakeNode(asyncio.Protocol):
    """Answers the handshake, then every request with a fixed result: at once, or, with
    ``cycle`` seconds, everything received within a cycle together at its end, as a
    leader answers the writes of one batch after its fsync."""

    def __init__(self, answers: dict[int, bytes], cycle: float) -> None:
        self.answers = answers
        self.cycle = cycle
        self.transport: asyncio.Transport | None = None
        self.hello = True
        self.buf = bytearray()
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = self.out
        pending = bool(out)
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < n:
                break
            msg = msgpack.unpackb(bytes(buf[pos + 4 : pos + 4 + n]), raw=False)
            pos += 4 + n
            if self.hello:
                self.hello = False
                out.append(encode(accept(1, 0x5EED)))
                continue
            req_id, op, _body = msg
            out.append(encode([req_id, OK, self.answers[op]]))
        del buf[:pos]
        if out and not pending:
            if self.cycle and not self.hello:
                asyncio.get_running_loop().call_later(self.cycle, self.flush)
            else:
                self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()


def serve(port_fd: int, cycle: float) -> None:
    """The child: listen on a free port, print it on ``port_fd``, serve until killed."""
    answers = {
        OP_WRITE: encode_result(PutResponse(12345)),
        OP_READ: encode_result(RangeResponse(12345, (KeyValue(b"k" * 14, VALUE, 7, 9, 2),))),
    }

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FakeNode(answers, cycle), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        os.write(port_fd, f"{port}\n".encode())
        await asyncio.Event().wait()

    asyncio.run(main())


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# -- (a) the client ---------------------------------------------------------------------------


async def _client_run(
    addr: str, op: str, concurrency: int, warmup: float, seconds: float, node_pid: int
) -> tuple[float, float, float, float]:
    """One run: (client us/op, of which in the kernel, node us/op, ops/s)."""
    kv = AsyncClient([addr], timeout=30.0)
    done = 0
    stopping = False
    latencies: list[float] = []

    async def caller(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        perf = time.perf_counter
        call: Callable[[bytes], Any]
        call = (lambda k: kv.put(k, VALUE)) if op == "put" else kv.get
        while not stopping:
            k = KEY_FORMAT % rng.randrange(100_000)
            t0 = perf()
            await call(k)
            latencies.append(perf() - t0)
            done += 1

    try:
        await kv.put(b"warm", VALUE)
        tasks = [asyncio.create_task(caller(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        n0, t0, w0, p0 = done, os.times(), time.perf_counter(), _proc_cpu(node_pid)
        await asyncio.sleep(seconds)
        n1, t1, w1, p1 = done, os.times(), time.perf_counter(), _proc_cpu(node_pid)
        stopping = True
        await asyncio.gather(*tasks)
    finally:
        await kv.close()
    ops = n1 - n0
    user, system = t1.user - t0.user, t1.system - t0.system
    return (user + system) / ops * 1e6, system / ops * 1e6, (p1 - p0) / ops * 1e6, ops / (w1 - w0)


def bench_client(args: argparse.Namespace) -> None:
    rfd, wfd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(wfd), "--cycle-ms", str(args.cycle_ms)],
        pass_fds=(wfd,),
        close_fds=True,
    )
    os.close(wfd)
    try:
        with os.fdopen(rfd) as f:
            port = int(f.readline())
        addr = f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port)):
            pass
        for op in args.ops.split(","):
            runs = [
                asyncio.run(
                    _client_run(addr, op, args.concurrency, args.warmup, args.seconds, child.pid)
                )
                for _ in range(args.runs)
            ]
            cl = statistics.median(r[0] for r in runs)
            kernel = statistics.median(r[1] for r in runs)
            node = statistics.median(r[2] for r in runs)
            rate = statistics.median(r[3] for r in runs)
            spread = ", ".join(f"{r[0]:.1f}" for r in runs)  # the machine's noise shows here
            print(
                f"client {op} c={args.concurrency}: {cl:6.1f} us/op CPU, {kernel:4.1f} of it "
                f"in the kernel (runs: {spread}); fake node {node:5.1f} us/op; {rate:,.0f} ops/s"
            )
    finally:
        child.kill()
        child.wait()


# -- (b) the codec ----------------------------------------------------------------------------


def _per_call(fn: Callable[[], object], n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def bench_codec(args: argparse.Namespace) -> None:
    key = KEY_FORMAT % 4242
    put_cmd = encode_command(Command(1 << 40, 7, PutRequest(key, VALUE)))
    get_cmd = encode_command(Command(0, 0, RangeRequest(key)))
    put_res = PutResponse(12345)
    get_res = RangeResponse(12345, (KeyValue(key, VALUE, 7, 9, 2),), False, 1)
    put_enc, get_enc = encode_result(put_res), encode_result(get_res)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("put: encode_command(Command(PutRequest))", lambda: encode_command(
            Command(1 << 40, 7, PutRequest(key, VALUE)))),
        ("put: decode_command", lambda: decode_command(put_cmd)),
        ("put: encode_result(PutResponse)", lambda: encode_result(put_res)),
        ("put: decode_result", lambda: decode_result(put_enc)),
        ("get: encode_command(Command(RangeRequest))", lambda: encode_command(
            Command(0, 0, RangeRequest(key)))),
        ("get: decode_command", lambda: decode_command(get_cmd)),
        ("get: encode_result(RangeResponse, 1 kv)", lambda: encode_result(get_res)),
        ("get: decode_result", lambda: decode_result(get_enc)),
    ]  # fmt: skip
    if encode_put is not None and encode_get is not None:
        put, get = encode_put, encode_get
        cases.insert(1, ("put: encode_put (what the client runs)", lambda: put(1, 7, key, VALUE)))
        cases.insert(5, ("get: encode_get (what the client runs)", lambda: get(key)))
    n = args.codec_calls
    for name, fn in cases:
        fn()
        runs = [_per_call(fn, n) for _ in range(args.runs)]
        print(f"{name:44s} {statistics.median(runs):6.2f} us/call (min {min(runs):5.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("client", "codec", "all"), default="all")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--ops", default="put,get", help="client operations to measure")
    ap.add_argument("--codec-calls", type=int, default=50_000)
    ap.add_argument(
        "--cycle-ms",
        type=float,
        default=0.0,
        help="the fake node answers what it got every this many ms (0: at once)",
    )
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve, args.cycle_ms / 1000)
        return
    if args.part in ("codec", "all"):
        bench_codec(args)
    if args.part in ("client", "all"):
        bench_client(args)


if __name__ == "__main__":
    main()
