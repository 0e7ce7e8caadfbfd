"""`templatekit patch`: insert verified generation tags and write the result (stdout, -o, --in-place, GGUF)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PatchError, TemplateSourceError
from ..sources import LoadedTemplate, load_templates, source_kind
from . import rewrite_formats
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, STATUS_STYLE, Console
from .options import (
    add_explain,
    add_format,
    add_limit_options,
    add_policy_options,
    add_template_kwargs,
    add_train_role,
    isolated,
    limits,
    located,
    output_format,
    print_refusal,
    public_api,
    template_kwargs,
    train_roles,
)
from .writing import add_mkdir, check_targets, deliver, write_in_place

__all__ = ["add_parser", "run", "write_in_place"]

# A template name that is safe as a file name (`\Z`, not `$`: `$` would let a final newline through).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*\Z")


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
        elif _SAFE_NAME.match(template.name) and template.name not in (".", ".."):
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
    if output_format(args) == "github" and not (args.output or args.in_place):
        return "--format github prints annotations, not templates: write them with -o OUT or --in-place"
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


def inputs_and_outputs(args: argparse.Namespace, err: Console) -> tuple[list, list[Path], bool] | None:
    """The source's chosen templates, the files to write them to and whether the output is a GGUF file, for
    commands that rewrite templates (`patch`, `strip`); None once a usage error is printed."""
    kind_of_source = source_kind(args.source)
    problem = _output_problem(args, kind_of_source)
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
    if args.output and not check_targets(args, targets or [Path(args.output)], err):
        return None
    origins = [t.origin for t in templates if t.origin is not None]
    if args.in_place and kind_of_source not in ("hub", "gguf") and not check_targets(args, origins, err):
        return None
    return templates, targets, gguf_out


def rewrite_each(
    templates: list,
    rewrite: Callable[[str], Any],
    refused: type[Exception],
    verb: str,
    args,
    consoles: tuple[Console, Console],
) -> tuple[list, int | None]:
    """`rewrite(template.text)` for every template, and None; or, once any fails, what was done and the exit
    code, its reasons printed (a refusal: every template is tried, then nothing is written; bad input: at once).
    With `--format json|github` the failures are also reported on stdout (`rewrite_formats`)."""
    results, failed, entries = [], False, []
    for template in templates:
        try:
            results.append(rewrite(template.text))
        except TemplateSourceError as exc:
            err_line = str(located(exc, template))
            consoles[1].line(f"error: {err_line}", "red")
            entries.append(rewrite_formats.outcome(template, "error", reasons=[err_line]))
            _report(args, verb, consoles[0], entries, EXIT_USAGE)
            return results, EXIT_USAGE
        except refused as exc:
            failed = True
            outcome = "nothing written" if args.output or args.in_place else "no template printed"
            print_refusal(consoles[1], template.label, f"cannot {verb}, {outcome}", exc.reasons, template.text, args)
            entries.append(rewrite_formats.outcome(template, "refused", reasons=exc.reasons))
    if failed:
        _report(args, verb, consoles[0], entries, EXIT_FAIL)
        return results, EXIT_FAIL
    return results, None


def _report(args, verb: str, out: Console, entries: list[dict[str, Any]], code: int) -> None:
    """The outcome document on stdout, for `--format json|github` (nothing for text)."""
    fmt = output_format(args)
    if fmt == "json":
        out.raw(rewrite_formats.to_json(verb, entries, code))
    elif fmt == "github":
        out.raw(rewrite_formats.to_github(verb, entries))


def deliver_rewritten(
    args: argparse.Namespace,
    verb: str,
    chosen: tuple[list, list[Path], bool],
    texts: list[str],
    entries: list[dict[str, Any]],
    consoles: tuple[Console, Console],
    describe: Callable[[Console, Console], None],
) -> int:
    """Write the rewritten templates as `deliver` does; with `--format json|github`, then report every template's
    `entries` on stdout (the templates themselves in the JSON when no file was asked for)."""
    templates, targets, gguf_out = chosen
    if output_format(args) == "text":
        return deliver(args, templates, targets, gguf_out, texts, consoles, describe)
    out, err = consoles
    if args.output or args.in_place:
        code = deliver(args, templates, targets, gguf_out, texts, (err, err), describe)
    else:
        describe(err, err)
        code = EXIT_OK
        for entry, text in zip(entries, texts):
            entry["template"] = text
    _report(args, verb, out, entries, code)
    return code


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
        "strict": args.strict,
        "retag": not args.keep_tags,
        "template_kwargs": template_kwargs(args),
        **limits(args),
    }
    # Each template in a child process under hard limits (templatekit.core.sandbox.isolation).
    results, code = rewrite_each(
        templates,
        lambda text: isolated(args, api.patch_template, text, **options),
        PatchError,
        "patch",
        args,
        (out, err),
    )
    if code is not None:
        return code
    diff_to_stdout = bool(args.output or args.in_place)

    def describe(out: Console, err: Console) -> None:
        for template, result in zip(templates, results):
            err.line(f"{template.label}: {result.status.replace('_', ' ')}", STATUS_STYLE.get(result.status))
            err.line(f"  verification {result.report.summary()}")
            for note in result.report.notes:
                err.line(f"  note: {note}", "dim")
            if args.diff:
                err.flush()
                (out if diff_to_stdout else err).diff(result.diff or "(no changes)\n")
                (out if diff_to_stdout else err).flush()
        err.flush()

    texts = [result.template for result in results]
    entries = [
        rewrite_formats.outcome(
            template,
            result.status,
            summary=f"verification {result.report.summary()}",
            notes=result.report.notes,
            diff=(result.diff or "") if args.diff else None,
        )
        for template, result in zip(templates, results)
    ]
    return deliver_rewritten(args, "patch", chosen, texts, entries, (out, err), describe)


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
    add_mkdir(parser)
    add_explain(parser)
    add_format(
        parser, "every template's status, verification summary, notes or refusal; the template itself without -o"
    )


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
    add_policy_options(patch)
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
