"""library.errors: one-line reporting of user errors."""

from __future__ import annotations

from library.errors import UserError, first_line, run_cli


def test_first_line_of_multi_line_and_empty_messages():
    assert first_line(ValueError("bad value\n  detail\n  more")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   ")) == "RuntimeError"


def test_run_cli_prints_one_line_and_returns_the_exit_code(capsys):
    def main(argv):
        raise UserError("x.toml: key 'a' is wrong", exit_code=3)

    assert run_cli(main, ["--flag"]) == 3
    assert capsys.readouterr().err == "error: x.toml: key 'a' is wrong\n"
