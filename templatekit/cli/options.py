"""What several commands share: the limits (`--max-steps`, `--max-memory`, `--timeout`) and the child process the
work on a template runs in, `--train-role`, `--template-kwarg`, and how an error from the core names the
template's file."""

from __future__ import annotations

import argparse
import gc
from typing import Any

from ..errors import TemplateSourceError
from ..sources import LoadedTemplate

__all__ = [
    "RESERVED_KWARGS",
    "add_format",
    "add_limit_options",
    "add_policy_options",
    "add_template_kwargs",
    "add_train_role",
    "isolated",
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


_OFF = ("none", "off")


def _seconds_or_none(text: str) -> float | str:
    """Seconds, or "none" (the wall-clock backstop turned off)."""
    if text.strip().lower() in _OFF:
        return "none"
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (e.g. 60 or 2.5, or none for no limit)")
    return seconds


def _steps(text: str) -> int:
    try:
        steps = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        steps = 0
    if steps <= 0:
        raise argparse.ArgumentTypeError(f"not a number of steps: {text!r} (e.g. 50000000)")
    return steps


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
    """`--max-steps N`, `--max-memory SIZE` and `--timeout SECONDS|none`: the limits on the work on each template
    (which also runs in a child process under hard limits of its own)."""
    sub.add_argument(
        "--max-steps",
        type=_steps,
        metavar="N",
        help="work allowed for each template, in steps (loop iterations, calls, comparisons, characters built): "
        "the same verdict on any machine under any load; default 50000000",
    )
    sub.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="memory a template may build while it is rendered (e.g. 512M, 1G); default 1G",
    )
    sub.add_argument(
        "--timeout",
        type=_seconds_or_none,
        metavar="SECONDS",
        help="wall-clock backstop for each template, for what no step counts (it depends on the machine's load, so "
        "it is generous); default 60, none to turn it off",
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


def add_explain(sub: argparse.ArgumentParser) -> None:
    """`--explain`: every reason of a refusal, as the verifier wrote it, instead of the grouped few."""
    sub.add_argument(
        "--explain",
        action="store_true",
        help="on a refusal, list every reason as the verifier wrote it (by default: the kind of problem, at most 3 "
        "grouped reasons and what to do)",
    )


def print_refusal(err: Any, label: str, verdict: str, reasons: list[str], template: str | None, args: Any) -> None:
    """A refusal in at most five lines: `label: verdict: kind (where)`, at most three grouped reasons, what to do
    (`templatekit.core.refusal`); every reason with --explain."""
    from ..core.refusal import explain  # on use: --help loads nothing of the core

    refusal = explain(reasons, template)
    err.line(f"{label}: {verdict}: {refusal.headline()}", "bold red")
    for line in refusal.lines(explain=getattr(args, "explain", False)):
        err.line(f"  {line}")


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
    """`max_steps`, `max_memory` and `timeout` as the core functions take them (the defaults when not given)."""
    from ..core.sandbox import DEFAULT

    timeout = getattr(args, "timeout", None)
    return {
        "max_steps": DEFAULT if getattr(args, "max_steps", None) is None else args.max_steps,
        "max_memory": DEFAULT if getattr(args, "max_memory", None) is None else args.max_memory,
        "timeout": DEFAULT if timeout is None else None if timeout == "none" else timeout,
    }


def isolated(
    args: argparse.Namespace, function: Any, /, *call_args: Any, operations: int | None = 1, **kwargs: Any
) -> Any:
    """`function(*call_args, **kwargs)` under the command's limits in a child process with hard limits
    (`templatekit.core.sandbox.isolation`; `operations` as `run_isolated` takes it): a template that takes Python
    past what it can interrupt ends in one `TemplateLimitError`, and the command goes on."""
    from ..core.sandbox import active_limits
    from ..core.sandbox.isolation import run_isolated

    _warm_up()
    budget = active_limits().replace(**limits(args))
    return run_isolated(function, *call_args, limits=budget, operations=operations, **kwargs)


_WARM: list[bool] = []
_TINY = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"


def _warm_up() -> None:
    """Do here, once, what each child process would otherwise do again: import the core and transformers, build
    the environments and the probes (a tiny template patched and rendered). The children share it all."""
    if _WARM:
        return
    _WARM.append(True)
    from ..training.spans import SpanRenderer

    SpanRenderer(_TINY).render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    # What exists now is never collected by a child: its collector then leaves these pages shared, not copied.
    gc.freeze()


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
