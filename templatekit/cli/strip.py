"""`templatekit strip`: remove the generation tags for deployment, verified to render identically.

Reads and writes like `patch`: any source `patch` takes; stdout by default, `-o OUT` (a file, a folder, or a
new GGUF file from a GGUF source), or `--in-place` for a local model (with a `.bak` backup). Exit 0 when every
template is stripped (or had no tags), 1 when removing the tags would change what a template renders (nothing
is written), 2 for usage or input errors.
"""

from __future__ import annotations

import argparse
import difflib

from ..errors import StripError
from . import rewrite_formats
from .console import EXIT_USAGE, Console
from .options import add_limit_options, isolated, limits
from .patch import add_source_and_output, deliver_rewritten, inputs_and_outputs, rewrite_each

__all__ = ["add_parser", "run"]


def _diff(original: str, stripped: str) -> str:
    lines = difflib.unified_diff(
        original.splitlines(keepends=True), stripped.splitlines(keepends=True), fromfile="tagged", tofile="stripped"
    )
    return "".join(lines)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Strip the source's templates and write them where asked; the exit code."""
    from ..core.strip import strip_template  # on use: jinja2 and transformers are not needed for --help
    from ..core.tags import TAG

    chosen = inputs_and_outputs(args, err)
    if chosen is None:
        return EXIT_USAGE
    templates, targets, gguf_out = chosen

    stripped, code = rewrite_each(
        templates,
        lambda text: isolated(args, strip_template, text, **limits(args)),
        StripError,
        "strip",
        args,
        (out, err),
    )
    if code is not None:
        return code
    diff_to_stdout = bool(args.output or args.in_place)

    def describe(out: Console, err: Console) -> None:
        for template, text in zip(templates, stripped):
            removed = len(TAG.findall(template.text))
            if removed:
                err.line(
                    f"{template.label}: removed {removed} generation tags; renders identically on every probe", "green"
                )
            else:
                err.line(f"{template.label}: no generation tags; unchanged")
            if args.diff:
                err.flush()
                (out if diff_to_stdout else err).diff(_diff(template.text, text) or "(no changes)\n")
                (out if diff_to_stdout else err).flush()
        err.flush()

    entries = [
        rewrite_formats.outcome(
            template,
            "stripped" if text != template.text else "unchanged",
            summary=f"removed {len(TAG.findall(template.text))} generation tags; renders identically on every probe",
            diff=_diff(template.text, text) if args.diff else None,
        )
        for template, text in zip(templates, stripped)
    ]
    return deliver_rewritten(args, "strip", chosen, stripped, entries, (out, err), describe)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `strip` command."""
    strip = commands.add_parser(
        "strip",
        help="remove generation tags for deployment, verified to render identically",
        description="Remove the {% generation %} tags from a template (any source patch takes) so that inference "
        "engines without generation-tag support (llama.cpp, text-generation-webui, tabbyAPI) can load the model. "
        "The result is rendered beside the tagged template on every probe conversation and written only if they "
        "are identical. Prints the stripped template (--stdout, the default), writes it with -o, or updates a "
        "local model in place with --in-place.",
    )
    add_source_and_output(strip, "strip", "stripped", "the tagged template")
    strip.add_argument("--force", action="store_true", help="allow -o to overwrite the input file")
    add_limit_options(strip)
    strip.set_defaults(func=run)
