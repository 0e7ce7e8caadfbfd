"""The `templatekit` command: patch, check and report on chat templates.

    templatekit patch SOURCE [--revision REV] [-o OUT [--mkdir] | --stdout | --in-place] [--diff] [--train-role R ...]
                      [--only-last-turn] [--keep-tags] [--template-kwarg NAME=VALUE ...]
    templatekit check SOURCE... [--format text|json|github | --json] [--quiet] [--train-role R ...]
    templatekit report PATH... [--summary] [--quiet] [--format text|json|github | --json] [--fail-on refused|wrong]
    templatekit apply --template NAME [SOURCE] [-o OUT [--mkdir] | --in-place] [--force]
    templatekit show SOURCE [--messages CONV.json] [--tokenizer SOURCE] [--html OUT [--mkdir]]
    templatekit strip SOURCE [--revision REV] [-o OUT [--mkdir] | --stdout | --in-place] [--diff] [--name NAME]
    templatekit audit SOURCE --data FILE.jsonl [--tokenizer PATH] [--max-length N] [--format text|json|github]
    templatekit --version

patch, check, report, show, strip and audit take --max-steps N, --max-memory SIZE (512M, 1G) and --timeout SECONDS
(none: off): the limits on the work on each template (default 50,000,000 steps, 1 GiB, and a 60 s wall-clock
backstop; `templatekit.core.sandbox`), which runs in a child process under hard limits of its own. A template that
goes past one is refused with one line naming the limit and the place (exit 2; report and check list it and go on).

Exit codes: 0 success, 1 a template cannot be patched or fails its check, 2 bad usage or unreadable input.
`patch` writes the patched template to stdout (or to `-o`, or back into a local model with `--in-place`); its
verification summary and messages go to stderr, and the diff goes to stdout when `-o` or `--in-place` is given,
to stderr otherwise. Colour and tables are used only when the stream is a terminal. Files are read only when
regular, written only to a regular file or a new path (`writing`); a file that cannot be read or written is one
line naming it, exit 2, never a traceback. SIGTERM unwinds like Ctrl-C, so no temporary file is left behind.

One module per command (`patch`, `check`, `show`, `apply`, `report`, `strip`, `audit`), each with `add_parser` and `run`; `console`
writes, `options` holds what several commands share, `writing` where output goes. Nothing heavy is imported before
a command runs, so `templatekit --help` loads neither the core nor transformers.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import TemplateSourceError
from . import apply, audit, check, patch, report, show, strip
from .console import EXIT_OK, EXIT_USAGE, Console

__all__ = ["build_parser", "main"]


@contextmanager
def _signals_handled() -> Iterator[list[int]]:
    """SIGTERM unwinds like Ctrl-C (a KeyboardInterrupt raised where the command is: each write removes its
    temporary file and an in-place update puts the folder back; a second signal waits for that); the file-size
    limit (SIGXFSZ) is an OS error on the write that meets it, not a kill. Yields the signals received. Only in the
    main thread, and put back afterwards (`main` also runs inside other programs)."""
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def terminate(number: int, frame: object) -> None:
        received.append(number)
        if len(received) == 1:
            raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    if hasattr(signal, "SIGXFSZ"):
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# Arguments that name a path, a role or a template: an empty one ('' from a script's unset variable) is a usage
# error, not the current folder or "not given".
_NON_EMPTY = {
    "source": "SOURCE",
    "sources": "SOURCE",
    "paths": "PATH",
    "output": "-o/--output",
    "html": "--html",
    "messages": "--messages",
    "data": "--data",
    "tokenizer": "--tokenizer",
    "name": "--name",
    "train_roles": "--train-role",
    "template": "--template",
}


def _empty_argument(args: argparse.Namespace) -> str | None:
    """The first argument given as an empty string, by its name on the command line."""
    for key, shown in _NON_EMPTY.items():
        value = getattr(args, key, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            return shown
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("templatekit")
    except PackageNotFoundError:  # run from a source tree
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the `templatekit` command."""
    parser = argparse.ArgumentParser(
        prog="templatekit",
        description="Make chat templates trainable: insert verified {% generation %} tags around assistant output.",
    )
    parser.add_argument("--version", action="version", version=f"templatekit {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (patch, check, show, apply, report, strip, audit):  # the order --help lists them in
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        main(["check", "chat_template.jinja"])
        # 0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if (empty := _empty_argument(args)) is not None:
        print(f"templatekit {args.command}: error: argument {empty}: an empty value", file=sys.stderr)
        return EXIT_USAGE
    out, err = Console(sys.stdout), Console(sys.stderr)
    received: list[int] = []
    try:
        with _signals_handled() as received:
            return args.func(args, out, err)
    except BrokenPipeError:  # `templatekit patch x.jinja | head`
        return EXIT_OK
    except TemplateSourceError as exc:  # a limit, or a file that cannot be read or written: one line, no traceback
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if received and received[0] == signal.SIGTERM:
            err.line("terminated (SIGTERM): nothing half-written is left", "red")
            return 128 + signal.SIGTERM
        err.line("interrupted (Ctrl-C): nothing half-written is left", "red")
        return 128 + signal.SIGINT
    finally:
        try:
            out.flush()
            err.flush()
        except (BrokenPipeError, ValueError):
            pass
