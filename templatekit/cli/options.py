"""What several commands share: the `--timeout`, `--max-memory` and `--train-role` options, and how an error
from the core names the template's file."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import TemplateSourceError
from ..sources import LoadedTemplate

__all__ = [
    "RESERVED_KWARGS",
    "add_format",
    "add_limit_options",
    "add_template_kwargs",
    "add_train_role",
    "limits",
    "located",
    "output_format",
    "public_api",
    "reason_of",
    "template_kwargs",
    "train_roles",
]

#: What the renderer passes to every template itself: a switch of one of these names would replace the conversation.
RESERVED_KWARGS = ("messages", "tools", "documents", "add_generation_prompt", "continue_final_message")
#: The output formats of the commands that report (`check`, `report`, `audit`).
FORMATS = ("text", "json", "github")


def add_format(sub: argparse.ArgumentParser, what: str) -> None:
    """`--format text|json|github` and its alias `--json`: how a command that reports prints (`what`: what JSON
    holds, for the help)."""
    sub.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help=f"text (default); json: one JSON document on stdout ({what}); github: GitHub Actions annotations "
        "(::error file=…,line=…) and a summary line",
    )
    sub.add_argument("--json", action="store_true", help="the same as --format json")


def output_format(args: argparse.Namespace) -> str:
    """The format `--format` (or `--json`) asked for."""
    return "json" if args.json else args.format


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (e.g. 10 or 2.5)")
    return seconds


def _size(text: str) -> int:
    from ..core.sandbox import parse_size  # imported on use: jinja2 is not needed for --help

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M or 1G)")
    return size


def add_limit_options(sub: argparse.ArgumentParser) -> None:
    """`--timeout SECONDS` and `--max-memory SIZE`: the limits on each template's renders."""
    sub.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="wall time allowed for each template (patching and verifying it, or rendering it); default 10",
    )
    sub.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="memory a template may build while it is rendered (e.g. 512M, 1G); default 1G",
    )


def add_policy_options(sub: argparse.ArgumentParser) -> None:
    """`--only-last-turn` and `--strict`: which turns the tags train, and how exactly (patch and check alike)."""
    sub.add_argument("--only-last-turn", action="store_true", help="train only the last assistant turn")
    sub.add_argument(
        "--strict",
        action="store_true",
        help="refuse tags that train whitespace after a stop marker (accepted with a note otherwise: the model "
        "never predicts past its stop token)",
    )


def add_train_role(sub: argparse.ArgumentParser) -> None:
    """`--train-role ROLE` (repeatable): the roles whose messages are trained."""
    sub.add_argument(
        "--train-role",
        dest="train_roles",
        action="append",
        metavar="ROLE",
        help="a role whose messages are trained (repeat for several; default: assistant)",
    )


def _setting(text: str) -> tuple[str, Any]:
    """`NAME=VALUE`, the value read as JSON when it is (true, false, null, a number), else as text."""
    import json

    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. enable_thinking=false), got {text!r}")
    if name in RESERVED_KWARGS:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a template switch: the renderer passes {name} to the template itself "
            "(a switch is a name such as enable_thinking)"
        )
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return name, parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value


def add_template_kwargs(sub: argparse.ArgumentParser) -> None:
    """`--template-kwarg NAME=VALUE` (repeatable): the template's switches the tags are planned and verified for."""
    sub.add_argument(
        "--template-kwarg",
        dest="template_kwargs",
        action="append",
        type=_setting,
        metavar="NAME=VALUE",
        help="render with this template switch, as apply_chat_template's keyword (e.g. enable_thinking=false); "
        "the tags are planned and verified for it (repeat for several)",
    )


def template_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The switches `--template-kwarg` set."""
    return dict(args.template_kwargs or [])


def train_roles(args: argparse.Namespace) -> tuple[str, ...]:
    """The roles `--train-role` named, or the assistant."""
    return tuple(args.train_roles) if args.train_roles else ("assistant",)


def limits(args: argparse.Namespace) -> dict[str, Any]:
    """`timeout` and `max_memory` as the core functions take them (the defaults when not given)."""
    from ..core.sandbox import DEFAULT

    return {
        "timeout": DEFAULT if args.timeout is None else args.timeout,
        "max_memory": DEFAULT if args.max_memory is None else args.max_memory,
    }


def located(exc: TemplateSourceError, template: LoadedTemplate) -> TemplateSourceError:
    """The error with the template's file named, when the core only knew the text."""
    if exc.source not in (None, "", "<template>"):
        return exc
    return TemplateSourceError(exc.message, source=template.label, line=exc.line, column=exc.column)


def reason_of(exc: TemplateSourceError) -> str:
    """The error without its file name: `line:col: message`."""
    where = ":".join(str(part) for part in (exc.line, exc.column) if part is not None)
    return f"{where}: {exc.message}" if where else exc.message


def public_api() -> Any:
    """The `templatekit` package, whose public functions load on first use (PEP 562): commands call the API
    through it, so that `--help` and usage errors never load transformers."""
    import templatekit

    return templatekit
