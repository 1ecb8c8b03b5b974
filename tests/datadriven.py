"""A small data-driven test harness in the style of cockroachdb/datadriven.

A script file is a sequence of cases::

    # Lines starting with '#' and blank lines between cases are ignored.
    command arg1 arg2=val key=(1,2,3)
    optional input lines
    ----
    expected output lines
    (up to the next blank line or end of file)

    next-command
    ----
    ok

The first line of a case is the command name followed by arguments, each one of
``name``, ``name=value`` or ``name=(v1, v2, ...)`` (a list; spaces are allowed
inside the parentheses).  Lines up to a ``----`` separator are the input.  The
expected output runs from the separator to the next blank line.  Output that
itself contains blank lines uses the double-separator form: ``----`` twice,
the output, then ``----`` twice again.

``run_file`` hands every case to a handler returning the actual output and
compares it with the expected output, ignoring trailing whitespace on each line
and trailing blank lines.  All mismatches are reported together, each as a
unified diff naming ``file:line``.  With ``QKV_REWRITE=1`` in the environment
the file is rewritten in place with the actual outputs instead; everything
else in the file (comments, commands, inputs, unchanged outputs) is kept
byte for byte.  The harness knows nothing about what the commands mean.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, overload

SEP = "----"
REWRITE_ENV = "QKV_REWRITE"
_ARG_RE = re.compile(r"([^\s=()]+)(?:=(?:\(([^)]*)\)|([^\s()]*)))?(?:\s+|$)")


@dataclass
class Arg:
    """One argument of a command line: ``key``, ``key=v`` or ``key=(v1,v2)``."""

    key: str
    vals: list[str] = field(default_factory=list)


@dataclass
class TestCase:
    """One parsed case of a script file."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    pos: str  # "file:line" of the command line
    cmd: str
    args: list[Arg]
    input: str
    expected: str

    def arg(self, key: str) -> Arg | None:
        return next((a for a in self.args if a.key == key), None)

    def has(self, key: str) -> bool:
        return self.arg(key) is not None

    def str_arg(self, key: str, default: str | None = None) -> str | None:
        a = self.arg(key)
        if a is None:
            return default
        if len(a.vals) != 1:
            raise ValueError(f"{self.pos}: argument {key!r} wants one value, got {a.vals}")
        return a.vals[0]

    @overload
    def int_arg(self, key: str) -> int | None: ...
    @overload
    def int_arg(self, key: str, default: int) -> int: ...
    def int_arg(self, key: str, default: int | None = None) -> int | None:
        """The single integer value of ``key``, or ``default`` if it is absent."""
        val = self.str_arg(key)
        return default if val is None else self._int(key, val)

    def int_list(self, key: str) -> list[int]:
        """All values of ``key`` as integers; ``[]`` if it is absent."""
        a = self.arg(key)
        return [] if a is None else [self._int(key, v) for v in a.vals]

    def _int(self, key: str, val: str) -> int:
        try:
            return int(val)
        except ValueError:
            raise ValueError(f"{self.pos}: argument {key}={val!r} is not an integer") from None


Handler = Callable[[TestCase], str]


def _parse_command(line: str, pos: str) -> tuple[str, list[Arg]]:
    text, i, args = line.strip(), 0, []
    while i < len(text):
        m = _ARG_RE.match(text, i)
        if m is None:
            raise ValueError(f"{pos}: cannot parse arguments at {text[i:]!r}")
        key, lst, val = m.groups()
        if lst is not None:
            vals = [v.strip() for v in lst.split(",")] if lst.strip() else []
        else:
            vals = [] if val is None else [val]
        args.append(Arg(key, vals))
        i = m.end()
    if args[0].vals:
        raise ValueError(f"{pos}: a command line must start with a bare command name")
    return args[0].key, args[1:]


def _parse(text: str, name: str) -> list[tuple[TestCase, int, int]]:
    """Cases with the [start, end) line span of their ``----`` + output region."""
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]
    n, i, out = len(lines), 0, []
    while i < n:
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        pos = f"{name}:{i + 1}"
        cmd, args = _parse_command(lines[i], pos)
        start = i = i + 1
        while i < n and lines[i].rstrip() != SEP:
            i += 1
        if i == n:
            raise ValueError(f"{pos}: no {SEP} separator after command {cmd!r}")
        sep = i
        if sep + 1 < n and lines[sep + 1].rstrip() == SEP:
            j = sep + 2
            while j + 1 < n and not (lines[j].rstrip() == SEP == lines[j + 1].rstrip()):
                j += 1
            if j + 1 >= n:
                raise ValueError(f"{name}:{sep + 1}: unterminated {SEP}/{SEP} output block")
            body, end = lines[sep + 2 : j], j + 2
        else:
            j = sep + 1
            while j < n and lines[j].strip():
                j += 1
            body, end = lines[sep + 1 : j], j
        case = TestCase(pos, cmd, args, "\n".join(lines[start:sep]), "\n".join(body))
        out.append((case, sep, end))
        i = end
    return out


def parse(text: str, name: str = "<string>") -> list[TestCase]:
    """Parse script text; ``name`` is used in positions and error messages."""
    return [case for case, _, _ in _parse(text, name)]


def parse_file(path: str | Path) -> list[TestCase]:
    return parse(Path(path).read_bytes().decode("utf-8"), str(path))


def normalize(output: str) -> str:
    """Strip trailing whitespace on each line and trailing blank lines."""
    lines = [ln.rstrip() for ln in output.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _render(output: str, followed_by_text: bool) -> list[str]:
    body = output.split("\n") if output else []
    if "" in body or (body and body[0] == SEP):
        return [SEP, SEP, *body, SEP, SEP]
    # A single-separator block ends at a blank line: make sure there is one.
    return [SEP, *body, *([""] if followed_by_text else [])]


def run_file(path: str | Path, handler: Handler) -> None:
    """Run every case of ``path`` through ``handler``; see the module docstring."""
    __tracebackhide__ = True
    path = Path(path)
    text = path.read_bytes().decode("utf-8")
    cases = _parse(text, str(path))
    rewrite = os.environ.get(REWRITE_ENV, "") not in ("", "0")
    lines = text.split("\n")
    new_lines: list[str] = []
    done = 0  # lines[:done] are already copied to new_lines
    failures: list[str] = []
    for case, start, end in cases:
        try:
            actual = normalize(handler(case))
        except Exception as e:
            e.add_note(f"while running datadriven case at {case.pos}: {case.cmd}")
            raise
        expected = normalize(case.expected)
        if actual == expected:
            continue
        if rewrite:
            followed = end < len(lines) and bool(lines[end].strip())
            new_lines += [*lines[done:start], *_render(actual, followed)]
            done = end
            continue
        diff = difflib.unified_diff(
            expected.split("\n") if expected else [],
            actual.split("\n") if actual else [],
            fromfile=f"{case.pos} expected",
            tofile=f"{case.pos} actual",
            lineterm="",
        )
        failures.append(f"{case.pos}: {case.cmd}: output mismatch\n" + "\n".join(diff))
    if rewrite and done:
        path.write_bytes("\n".join(new_lines + lines[done:]).encode("utf-8"))
    if failures:
        head = f"{len(failures)} mismatching case(s) in {path} (set {REWRITE_ENV}=1 to rewrite)"
        raise AssertionError("\n\n".join([head, *failures]))


def files(dirpath: str | Path, pattern: str = "*.txt") -> list[Path]:
    """Script files in ``dirpath`` matching ``pattern``, sorted, for parametrize."""
    return sorted(p for p in Path(dirpath).glob(pattern) if p.is_file())


def run_dir(
    dirpath: str | Path, make_handler: Callable[[], Handler], pattern: str = "*.txt"
) -> list[tuple[str, Callable[[], None]]]:
    """``(file name, runner)`` pairs; each runner uses a fresh handler."""

    def runner(p: Path) -> Callable[[], None]:
        return lambda: run_file(p, make_handler())

    return [(p.name, runner(p)) for p in files(dirpath, pattern)]
