"""`templatekit apply`: give a model without a chat template one from the template library."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import NoChatTemplateError, TemplateSourceError, UnknownTemplateError
from ..sources import LoadedTemplate, load_templates, source_kind, write_text_atomic
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Console
from .options import public_api
from .patch import write_in_place

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Give a model without a chat template (or, with --force, any model) a template from the library."""
    from ..library import get_template  # on use: importlib.resources is not loaded for --help

    try:
        text = get_template(args.template_format)
    except UnknownTemplateError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    existing: list[LoadedTemplate] = []
    if args.source is not None:
        kind = source_kind(args.source)
        if kind not in ("folder", "tokenizer_config", "chat_template_json"):
            err.line(f"error: {args.source}: apply takes a local model folder or its tokenizer_config.json", "red")
            return EXIT_USAGE
        try:
            existing = load_templates(args.source)
        except NoChatTemplateError:
            existing = []  # a base model: what apply is for
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return EXIT_USAGE
        if existing and not args.force:
            err.line(
                f"error: {existing[0].label} already has a chat template; `templatekit patch` makes it trainable, "
                "--force replaces it",
                "red",
            )
            return EXIT_USAGE
    elif args.in_place:
        err.line("error: --in-place needs a SOURCE (a model folder or its tokenizer_config.json)", "red")
        return EXIT_USAGE

    report = public_api().check_template(text)  # the library is tested; this guards a damaged installation
    if not report.ok:
        err.line(f"library template {args.template_format!r} fails verification:", "bold red")
        for reason in report.reasons:
            err.line(f"  - {reason}")
        return EXIT_FAIL
    err.line(f"{args.template_format}: verification {report.summary()}")

    if args.in_place:
        default = [t for t in existing if t.name == "default"]
        if default:  # --force: replace the template where the model keeps it, with a backup
            return write_in_place(default, [text], err)
        folder = Path(args.source) if Path(args.source).is_dir() else Path(args.source).parent
        target = folder / "chat_template.jinja"  # read by transformers before tokenizer_config.json
    elif args.output:
        target = Path(args.output)
        target = target / "chat_template.jinja" if target.is_dir() else target
    else:
        out.raw(text)
        return EXIT_OK
    write_text_atomic(target, text)
    err.line(f"wrote {target}")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `apply` command."""
    apply = commands.add_parser(
        "apply",
        help="give a model without a chat template one from the template library",
        description="Take a training-ready template (with verified generation tags) from the library and print it, "
        "write it with -o, or add it to a local base model with --in-place (as chat_template.jinja). A model that "
        "already has a chat template is left alone unless --force is given (then its template is replaced where "
        "it is kept, with a .bak backup).",
    )
    apply.add_argument(
        "--format",
        dest="template_format",
        required=True,
        metavar="NAME",
        help="the library template: alpaca, chatml, gemma, llama3, mistral, phi3, vicuna or zephyr",
    )
    apply.add_argument("source", metavar="SOURCE", nargs="?", help="a local model folder or its tokenizer_config.json")
    apply_written = apply.add_mutually_exclusive_group()
    apply_written.add_argument(
        "-o", "--output", metavar="OUT", help="write the template here (a folder: OUT/chat_template.jinja)"
    )
    apply_written.add_argument("--in-place", action="store_true", help="add the template to the model folder SOURCE")
    apply.add_argument("--force", action="store_true", help="replace a chat template SOURCE already has")
    apply.set_defaults(func=run)
