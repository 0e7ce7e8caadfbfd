"""`templatekit patch`: insert verified generation tags and write the result (stdout, -o, --in-place, GGUF)."""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GenerationTagsWarning, PatchError, TemplateSourceError
from ..sources import LoadedTemplate, load_templates, source_kind, write_text_atomic
from ..sources.gguf import write_gguf_templates
from ..sources.in_place import update_in_place
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, STATUS_STYLE, Console
from .options import (
    add_limit_options,
    add_template_kwargs,
    add_train_role,
    isolated,
    limits,
    located,
    public_api,
    template_kwargs,
    train_roles,
)

__all__ = ["add_parser", "run", "write_in_place"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][\w.-]*$")


def _targets(args: argparse.Namespace, templates: list[LoadedTemplate]) -> list[Path]:
    """Where each patched template goes: one file, or a model-folder layout when OUT is a folder or several
    templates come out (`chat_template.jinja` and `additional_chat_templates/NAME.jinja`)."""
    out = Path(args.output)
    if len(templates) == 1 and not out.is_dir():
        return [out]
    targets = []
    for template in templates:
        if template.name == "default":
            targets.append(out / "chat_template.jinja")
        elif _SAFE_NAME.match(template.name):
            targets.append(out / "additional_chat_templates" / f"{template.name}.jinja")
        else:
            raise TemplateSourceError(
                f"template name {template.name!r} cannot be used as a file name; pick it with --name",
                source=template.label,
            )
    return targets


def _is_input(target: Path, templates: list[LoadedTemplate]) -> bool:
    if not target.exists():
        return False
    for template in templates:
        try:
            if template.origin is not None and target.samefile(template.origin):
                return True
        except OSError:
            continue
    return False


def _output_problem(args: argparse.Namespace, kind: str) -> str | None:
    """Why the chosen output does not fit this kind of source (checked before anything is fetched or read)."""
    if args.revision is not None and kind != "hub":
        return f"--revision applies only to a Hugging Face Hub id; {args.source} is a local {kind}"
    if args.in_place and kind == "hub":
        return (
            f"--in-place updates a local model folder or file; {args.source} is a Hugging Face Hub id "
            "(write the result with -o FOLDER or --stdout)"
        )
    if args.in_place and kind == "gguf":
        return "--in-place never modifies a GGUF file; write a new one with -o NEW.gguf"
    if args.output and Path(args.output).suffix.lower() == ".gguf" and kind != "gguf":
        return f"-o {args.output}: a GGUF file can only be written from a GGUF source"
    return None


def _chosen(args: argparse.Namespace, templates: list[LoadedTemplate], err: Console) -> list[LoadedTemplate] | None:
    """The templates to patch (all, or the one --name picks); None after printing why there is no good choice."""
    if args.name:
        chosen = [t for t in templates if t.name == args.name]
        if not chosen:
            names = ", ".join(t.name for t in templates)
            err.line(f"error: {args.source}: no template named {args.name!r} (found: {names})", "red")
            return None
        templates = chosen
    if len(templates) > 1 and not (args.output or args.in_place):
        names = ", ".join(t.name for t in templates)
        err.line(
            f"error: {args.source} holds {len(templates)} templates ({names}); pass -o FOLDER (or --in-place) to "
            "write them all or --name NAME to pick one",
            "red",
        )
        return None
    return templates


def _write_gguf(args: argparse.Namespace, templates: list[LoadedTemplate], results: list, err: Console) -> int:
    target = Path(args.output)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the tags warning, printed as one line below
            warnings.simplefilter("always", GenerationTagsWarning)
            write_gguf_templates(args.source, target, {t.name: r.template for t, r in zip(templates, results)})
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    err.line(f"wrote {target} (a new GGUF file; {args.source} is unchanged)")
    for warning in caught:
        if issubclass(warning.category, GenerationTagsWarning):
            err.line(f"warning: {warning.message}", "yellow")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return EXIT_OK


def write_in_place(templates: list[LoadedTemplate], texts: list[str], err: Console) -> int:
    """Put `texts` back where the local model keeps `templates` (with backups), and say what changed."""
    try:
        updates = update_in_place(templates, texts)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    except OSError as exc:
        err.line(f"error: {exc.filename or ''}: cannot write: {exc.strerror or exc}; the files are unchanged", "red")
        return EXIT_USAGE
    for update in updates:
        if update.changed:
            err.line(f"updated {update.path} (backup: {update.backup})")
        else:
            err.line(f"{update.path}: unchanged, already verified")
    return EXIT_OK


def inputs_and_outputs(args: argparse.Namespace, err: Console) -> tuple[list, list[Path], bool] | None:
    """The source's chosen templates, the files to write them to and whether the output is a GGUF file, for
    commands that rewrite templates (`patch`, `strip`); None once a usage error is printed."""
    problem = _output_problem(args, source_kind(args.source))
    if problem:
        err.line(f"error: {problem}", "red")
        return None
    try:
        templates = load_templates(args.source, revision=args.revision)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return None
    templates = _chosen(args, templates, err)
    if templates is None:
        return None
    gguf_out = bool(args.output) and Path(args.output).suffix.lower() == ".gguf"
    targets: list[Path] = []
    if args.output and not gguf_out:
        try:
            targets = _targets(args, templates)
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return None
        clobbered = [t for t in targets if _is_input(t, templates)]
        if clobbered and not args.force:
            err.line(f"error: refusing to overwrite the input {clobbered[0]}; pass --force to replace it", "red")
            return None
    return templates, targets, gguf_out


def rewrite_each(
    templates: list, rewrite: Callable[[str], Any], refused: type[Exception], verb: str, args, err: Console
) -> tuple[list, int | None]:
    """`rewrite(template.text)` for every template, and None; or, once any fails, what was done and the exit
    code, its reasons printed (a refusal: every template is tried, then nothing is written; bad input: at once)."""
    results, failed = [], False
    for template in templates:
        try:
            results.append(rewrite(template.text))
        except TemplateSourceError as exc:
            err.line(f"error: {located(exc, template)}", "red")
            return results, EXIT_USAGE
        except refused as exc:
            failed = True
            err.line(f"{template.label}: cannot {verb}", "bold red")
            for reason in exc.reasons:
                err.line(f"  - {reason}")
    if failed:
        err.line("nothing written" if args.output or args.in_place else "no template printed", "red")
        return results, EXIT_FAIL
    return results, None


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Patch the source's templates and write them where asked; the exit code."""
    chosen = inputs_and_outputs(args, err)
    if chosen is None:
        return EXIT_USAGE
    templates, targets, gguf_out = chosen

    api = public_api()
    options = {
        "train_roles": train_roles(args),
        "only_last_turn": args.only_last_turn,
        "retag": not args.keep_tags,
        "template_kwargs": template_kwargs(args),
        **limits(args),
    }
    # Each template in a child process under hard limits (templatekit.core.sandbox.isolation).
    results, code = rewrite_each(
        templates, lambda text: isolated(args, api.patch_template, text, **options), PatchError, "patch", args, err
    )
    if code is not None:
        return code
    writes = args.output or args.in_place

    diff_out = out if writes else err
    for template, result in zip(templates, results):
        err.line(f"{template.label}: {result.status.replace('_', ' ')}", STATUS_STYLE.get(result.status))
        err.line(f"  verification {result.report.summary()}")
        for note in result.report.notes:
            err.line(f"  note: {note}", "dim")
        if args.diff:
            err.flush()
            diff_out.diff(result.diff or "(no changes)\n")
            diff_out.flush()
    err.flush()

    if gguf_out:
        return _write_gguf(args, templates, results, err)
    if args.in_place:
        return write_in_place(templates, [r.template for r in results], err)
    if args.output:
        for target, result in zip(targets, results):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, result.template)
            err.line(f"wrote {target}")
    else:
        template = results[0].template
        # A terminal gets a final newline so the prompt does not glue onto the last line; a pipe gets the exact text.
        out.raw(template + "\n" if out.tty and not template.endswith("\n") else template)
    return EXIT_OK


def add_source_and_output(parser: argparse.ArgumentParser, verb: str, done: str, before: str) -> None:
    """SOURCE, --revision, -o / --stdout / --in-place, --diff and --name, as the commands that rewrite templates
    take them (`verb`/`done`: "patch"/"patched", "strip"/"stripped"; `before`: what --diff compares with)."""
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("--revision", metavar="REV", help="for a Hub id: the branch, tag or commit (default: main)")
    written = parser.add_mutually_exclusive_group()
    written.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help=f"write the {done} template here (a folder: chat_template.jinja + additional_chat_templates/; "
        f"NEW.gguf from a GGUF source: a new GGUF file with the {done} templates)",
    )
    written.add_argument("--stdout", action="store_true", help=f"print the {done} template (the default)")
    written.add_argument(
        "--in-place",
        action="store_true",
        help="update the local model folder or file where it keeps its template, with a .bak backup",
    )
    parser.add_argument("--diff", action="store_true", help=f"show the unified diff from {before}")
    parser.add_argument("--name", help=f"{verb} only the named template (e.g. tool_use)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `patch` command."""
    patch = commands.add_parser(
        "patch",
        help="insert generation tags and verify the result",
        description="Patch a template (a .jinja file, tokenizer_config.json, chat_template.json, model folder, GGUF "
        "file or Hugging Face Hub model id) and verify it renders byte-identically. Prints the patched template "
        "(--stdout, the default), writes it with -o, or updates a local model in place with --in-place.",
    )
    add_source_and_output(patch, "patch", "patched", "the original")
    add_train_role(patch)
    add_template_kwargs(patch)
    patch.add_argument("--only-last-turn", action="store_true", help="train only the last assistant turn")
    tags = patch.add_mutually_exclusive_group()
    tags.add_argument(
        "--keep-tags",
        action="store_true",
        help="refuse a template whose own generation tags fail verification (by default they are replaced)",
    )
    tags.add_argument("--retag", action="store_true", help=argparse.SUPPRESS)  # the default since 0.2; kept working
    patch.add_argument("--force", action="store_true", help="allow -o to overwrite the input file")
    add_limit_options(patch)
    patch.set_defaults(func=run)
