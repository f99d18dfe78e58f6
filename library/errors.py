"""The one exception type for bad user input.

Anything a user can fix (a bad flag, a broken TOML, a missing or corrupt file) raises
:class:`UserError` with one line that names the file or key and says what to do. Entry points
catch it, print the line without a traceback (unless ``--debug``) and exit non-zero.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one clear line.

    Args:
        message: One line naming the file/key and the fix.
        exit_code: Process exit status the entry point should use (2 = usage error).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when the message is empty)."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else exc.__class__.__name__


def run_cli(main_fn, argv=None) -> int:
    """Run ``main_fn(argv)`` turning :class:`UserError` into one stderr line and an exit code.

    ``--debug`` anywhere in ``argv`` (or ``sys.argv``) re-raises with the full traceback.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main_fn(args)
    except UserError as exc:
        if "--debug" in args:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
