"""Tests of the data-driven harness itself (tests/datadriven.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from datadriven import Arg, TestCase, files, normalize, parse, parse_file, run_dir, run_file

SCRIPT = """\
# a comment

echo a b=1 c=(1, 2,3) d=() e=x-y/z.w
line one
line two
----
a
b

# another comment
blank
----
----
first

third
----
----
empty
----

last
----
ok
"""


def echo(case: TestCase) -> str:
    """The handler used with SCRIPT: it reproduces every expected output."""
    if case.cmd == "echo":
        return "a\nb  \n\n"
    if case.cmd == "blank":
        return "first\n\nthird"
    return "" if case.cmd == "empty" else "ok"


def write(tmp_path: Path, text: str, name: str = "t.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_parse_cases_args_and_input() -> None:
    cases = parse(SCRIPT, "s.txt")
    assert [c.cmd for c in cases] == ["echo", "blank", "empty", "last"]
    assert [c.pos for c in cases] == ["s.txt:3", "s.txt:11", "s.txt:19", "s.txt:22"]
    c = cases[0]
    assert c.args == [
        Arg("a", []),
        Arg("b", ["1"]),
        Arg("c", ["1", "2", "3"]),
        Arg("d", []),
        Arg("e", ["x-y/z.w"]),
    ]
    assert c.input == "line one\nline two"
    assert c.expected == "a\nb"
    assert cases[1].input == ""
    assert cases[1].expected == "first\n\nthird"
    assert cases[2].expected == ""
    assert cases[3].expected == "ok"


def test_arg_helpers() -> None:
    (c,) = parse("cmd a b=7 c=(1,2) d=x\n----\n", "h.txt")
    assert c.has("a") and not c.has("z")
    assert c.arg("b") == Arg("b", ["7"]) and c.arg("z") is None
    assert c.int_arg("b") == 7
    assert c.int_arg("z") is None
    assert c.int_arg("z", 3) == 3
    assert c.int_list("c") == [1, 2] and c.int_list("b") == [7] and c.int_list("z") == []
    assert c.str_arg("d") == "x" and c.str_arg("z", "y") == "y"
    with pytest.raises(ValueError, match=r"h\.txt:1: argument d='x' is not an integer"):
        c.int_arg("d")
    with pytest.raises(ValueError, match=r"h\.txt:1: argument 'c' wants one value"):
        c.int_arg("c")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("# c\ncmd x=1\ninput\n", "p.txt:2: no ---- separator"),
        ("cmd\n----\n----\nout\n----\n", "p.txt:2: unterminated ----/---- output block"),
        ("cmd a=(1,2\n----\n", "p.txt:1: cannot parse arguments"),
        ("cmd=1\n----\n", "p.txt:1: a command line must start"),
    ],
)
def test_parse_errors_name_file_and_line(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=f"^{where}"):
        parse(text, "p.txt")


def test_normalize() -> None:
    assert normalize("a  \n b\t\n\n  \n") == "a\n b"
    assert normalize("\n\n") == ""


def test_run_file_passes_and_ignores_trailing_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path, SCRIPT)
    seen: list[str] = []

    def handler(case: TestCase) -> str:
        seen.append(case.cmd)
        return echo(case)

    run_file(path, handler)
    assert seen == ["echo", "blank", "empty", "last"]
    assert [c.cmd for c in parse_file(path)] == seen


def test_mismatches_are_all_reported_with_position_and_diff(tmp_path: Path) -> None:
    path = write(tmp_path, SCRIPT)
    seen: list[str] = []

    def handler(case: TestCase) -> str:
        seen.append(case.cmd)
        return {"echo": "a\nB", "last": "not ok"}.get(case.cmd) or echo(case)

    with pytest.raises(AssertionError) as info:
        run_file(path, handler)
    msg = str(info.value)
    assert seen == ["echo", "blank", "empty", "last"]  # no early stop
    assert msg.startswith(f"2 mismatching case(s) in {path}")
    assert f"{path}:3: echo: output mismatch" in msg
    assert f"--- {path}:3 expected" in msg and f"+++ {path}:3 actual" in msg
    assert "\n-b\n+B" in msg
    assert f"{path}:22: last: output mismatch" in msg and "\n-ok\n+not ok" in msg
    assert ":11" not in msg and ":19" not in msg


def test_handler_exception_names_case(tmp_path: Path) -> None:
    path = write(tmp_path, "boom\n----\n")

    def handler(case: TestCase) -> str:
        raise KeyError(case.cmd)

    with pytest.raises(KeyError) as info:
        run_file(path, handler)
    assert f"at {path}:1: boom" in "".join(info.value.__notes__)


def test_rewrite_round_trips_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QKV_REWRITE", "1")
    # Trailing spaces, a verbatim double-separator block without blank lines and
    # no final newline must all survive a rewrite that changes nothing.
    text = (
        SCRIPT.replace("----\na\n", "----  \na  \n")
        + "\ndbl\n----\n----\nx\n----\n----\nend\n----\ny"
    )
    path = write(tmp_path, text)
    run_file(path, lambda c: {"dbl": "x", "end": "y"}.get(c.cmd) or echo(c))
    assert path.read_bytes() == text.encode()


def test_rewrite_updates_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "# keep me\n"
        "one x=(1,2)\n"
        "in put  \n"
        "----\n"
        "old\n"
        "\n"
        "two\n"
        "----\n"
        "----\n"
        "a\n"
        "\n"
        "b\n"
        "----\n"
        "----\n"
        "three\n"
        "----\n"
        "same\n"
        "\n"
        "four\n"
        "----\n"
    )
    outputs = {"one": "new\n\nlines  \n", "two": "flat", "three": "same", "four": "x"}
    path = write(tmp_path, text)
    monkeypatch.setenv("QKV_REWRITE", "1")
    run_file(path, lambda c: outputs[c.cmd])
    assert path.read_text() == (
        "# keep me\n"
        "one x=(1,2)\n"
        "in put  \n"
        "----\n"
        "----\n"
        "new\n"
        "\n"
        "lines\n"
        "----\n"
        "----\n"
        "\n"
        "two\n"
        "----\n"
        "flat\n"
        "\n"  # added so that the single-separator block ends before 'three'
        "three\n"
        "----\n"
        "same\n"
        "\n"
        "four\n"
        "----\n"
        "x\n"
    )
    monkeypatch.delenv("QKV_REWRITE")
    run_file(path, lambda c: outputs[c.cmd])  # the rewritten file now passes


def test_files_and_run_dir(tmp_path: Path) -> None:
    write(tmp_path, "b\n----\nok\n", "b.txt")
    write(tmp_path, "a\n----\nok\n", "a.txt")
    write(tmp_path, "not a script", "notes.md")
    (tmp_path / "dir.txt").mkdir()
    assert [p.name for p in files(tmp_path)] == ["a.txt", "b.txt"]
    made: list[int] = []

    def make_handler() -> Callable[[TestCase], str]:
        made.append(1)
        return lambda case: "ok"

    runners = run_dir(tmp_path, make_handler)
    assert [name for name, _ in runners] == ["a.txt", "b.txt"]
    for _, run in runners:
        run()
    assert len(made) == 2
