"""The `templatekit` command: patch, check and report on chat templates.

    templatekit patch SOURCE [--revision REV] [-o OUT | --stdout | --in-place] [--diff] [--train-role R ...]
                      [--only-last-turn] [--keep-tags]
    templatekit check SOURCE... [--format text|json|github | --json] [--quiet] [--train-role R ...]
    templatekit report PATH... [--summary] [--quiet | --json] [--train-role R ...]
    templatekit apply --format NAME [SOURCE] [-o OUT | --in-place] [--force]
    templatekit show SOURCE [--messages CONV.json] [--tokenizer SOURCE] [--html OUT]
    templatekit strip SOURCE [--revision REV] [-o OUT | --stdout | --in-place] [--diff] [--name NAME]
    templatekit audit SOURCE --data FILE.jsonl [--tokenizer PATH] [--max-length N] [--format text|json]

patch, check, report, show, strip and audit take --max-steps N, --max-memory SIZE (512M, 1G) and --timeout SECONDS
(none: off): the limits on the work on each template (default 50,000,000 steps, 1 GiB, and a 60 s wall-clock
backstop; `templatekit.core.sandbox`), which runs in a child process under hard limits of its own. A template that
goes past one is refused with one line naming the limit and the place (exit 2; report and check list it and go on).

Exit codes: 0 success, 1 a template cannot be patched or fails its check, 2 bad usage or unreadable input.
`patch` writes the patched template to stdout (or to `-o`, or back into a local model with `--in-place`); its
verification summary and messages go to stderr, and the diff goes to stdout when `-o` or `--in-place` is given,
to stderr otherwise. Colour and tables are used only when the stream is a terminal.

One module per command (`patch`, `check`, `show`, `apply`, `report`, `strip`, `audit`), each with `add_parser` and `run`; `console`
writes, `options` holds what several commands share. Nothing heavy is imported before a command runs, so
`templatekit --help` loads neither the core nor transformers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import TemplateLimitError
from . import apply, audit, check, patch, report, show, strip
from .console import EXIT_OK, EXIT_USAGE, Console

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the `templatekit` command."""
    parser = argparse.ArgumentParser(
        prog="templatekit",
        description="Make chat templates trainable: insert verified {% generation %} tags around assistant output.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (patch, check, show, apply, report, strip, audit):  # the order --help lists them in
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> main(["check", "chat_template.jinja"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out, err = Console(sys.stdout), Console(sys.stderr)
    try:
        return args.func(args, out, err)
    except BrokenPipeError:  # `templatekit patch x.jinja | head`
        return EXIT_OK
    except TemplateLimitError as exc:  # wherever a command met it: one line, never a traceback
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    finally:
        try:
            out.flush()
            err.flush()
        except (BrokenPipeError, ValueError):
            pass
