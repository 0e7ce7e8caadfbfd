"""The `templatekit` command: patch, check and report on chat templates.

    templatekit patch SOURCE [--revision REV] [-o OUT | --stdout | --in-place] [--diff] [--train-role R ...]
                      [--only-last-turn] [--keep-tags]
    templatekit check SOURCE... [--format text|json|github | --json] [--quiet]
    templatekit report PATH... [--summary] [--quiet | --json] [--train-role R ...]
    templatekit apply --format NAME [SOURCE] [-o OUT | --in-place] [--force]
    templatekit show SOURCE [--messages CONV.json] [--tokenizer SOURCE] [--html OUT]

patch, check, report and show take --timeout SECONDS and --max-memory SIZE (512M, 1G): the limits on each
template's renders (default 10 s and 1 GiB, `templatekit.limits`). A template that goes past one is refused
with one line naming the limit and the place (exit 2; report lists it and goes on).

Exit codes: 0 success, 1 a template cannot be patched or fails its check, 2 bad usage or unreadable input.
`patch` writes the patched template to stdout (or to `-o`, or back into a local model with `--in-place`); its
verification summary and messages go to stderr, and the diff goes to stdout when `-o` or `--in-place` is given,
to stderr otherwise. Colour and tables are used only
when the stream is a terminal.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from templatekit.errors import PatchError, TemplateLimitError, TemplateSourceError
from templatekit.sources import (
    LoadedTemplate,
    NoChatTemplateError,
    find_template_files,
    load_templates,
    source_kind,
    write_text_atomic,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# Any generation tag, including forms TRL cannot see ({%+ generation %}): those templates count as tagged.
_TAG = re.compile(r"\{%[-+]?\s*(?:end)?generation\b")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][\w.-]*$")

_STATUS_STYLE = {
    "patched": "green",
    "retagged": "green",
    "already_tagged": "cyan",
    "already tagged": "cyan",
    "not patchable": "yellow",
    "wrong": "bold red",
    "ok": "green",
    "FAILED": "bold red",
}


class _Out:
    """One output stream: rich text and tables on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        try:
            self.tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._console = None
        if self.tty:
            from rich.console import Console

            self._console = Console(file=stream, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")

    def raw(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def diff(self, text: str) -> None:
        if self._console is None:
            self.raw(text)
            return
        for line in text.splitlines():
            if line.startswith(("+++", "---")):
                style = "bold"
            elif line.startswith("+"):
                style = "green"
            elif line.startswith("-"):
                style = "red"
            elif line.startswith("@@"):
                style = "cyan"
            else:
                style = None
            self.line(line, style)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], status_column: int) -> None:
        if self._console is not None:
            from rich.table import Table

            table = Table(*headers, show_lines=False)
            for row in rows:
                cells = list(row)
                style = _STATUS_STYLE.get(cells[status_column])
                cells[status_column] = f"[{style}]{cells[status_column]}[/]" if style else cells[status_column]
                table.add_row(*cells)
            self._console.print(table)
            return
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        for row in [list(headers), *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
            self.stream.write("  ".join(cells).rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _core():
    """The core API, imported on first use so that `--help` and usage errors stay fast."""
    import templatekit

    return templatekit


def _located(exc: TemplateSourceError, template: LoadedTemplate) -> TemplateSourceError:
    """The error with the template's file named, when the core only knew the text."""
    if exc.source not in (None, "", "<template>"):
        return exc
    label = template.label
    return TemplateSourceError(exc.message, source=label, line=exc.line, column=exc.column)


def _reason_of(exc: TemplateSourceError) -> str:
    """The error without its file name: `line:col: message`."""
    where = ":".join(str(part) for part in (exc.line, exc.column) if part is not None)
    return f"{where}: {exc.message}" if where else exc.message


def _train_roles(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.train_roles) if args.train_roles else ("assistant",)


def _limits(args: argparse.Namespace) -> dict:
    """`timeout` and `max_memory` as the core functions take them (the defaults when not given)."""
    from templatekit.limits import DEFAULT

    return {
        "timeout": DEFAULT if args.timeout is None else args.timeout,
        "max_memory": DEFAULT if args.max_memory is None else args.max_memory,
    }


# ------------------------------------------------------------------------------------------------------ patch


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


def _chosen(args: argparse.Namespace, templates: list[LoadedTemplate], err: _Out) -> list[LoadedTemplate] | None:
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


def _write_gguf(args: argparse.Namespace, templates: list[LoadedTemplate], results: list, err: _Out) -> int:
    from templatekit.gguf_file import write_gguf_templates

    target = Path(args.output)
    try:
        write_gguf_templates(args.source, target, {t.name: r.template for t, r in zip(templates, results)})
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    err.line(f"wrote {target} (a new GGUF file; {args.source} is unchanged)")
    return EXIT_OK


def _write_in_place(templates: list[LoadedTemplate], results: list, err: _Out) -> int:
    from templatekit.writing import update_in_place

    try:
        updates = update_in_place(templates, [r.template for r in results])
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


def _cmd_patch(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    kind = source_kind(args.source)
    problem = _output_problem(args, kind)
    if problem:
        err.line(f"error: {problem}", "red")
        return EXIT_USAGE
    try:
        templates = load_templates(args.source, revision=args.revision)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    templates = _chosen(args, templates, err)
    if templates is None:
        return EXIT_USAGE
    gguf_out = bool(args.output) and Path(args.output).suffix.lower() == ".gguf"
    targets: list[Path] = []
    if args.output and not gguf_out:
        try:
            targets = _targets(args, templates)
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return EXIT_USAGE
        clobbered = [t for t in targets if _is_input(t, templates)]
        if clobbered and not args.force:
            err.line(f"error: refusing to overwrite the input {clobbered[0]}; pass --force to replace it", "red")
            return EXIT_USAGE

    core = _core()
    options = {
        "train_roles": _train_roles(args),
        "only_last_turn": args.only_last_turn,
        "retag": not args.keep_tags,
        **_limits(args),
    }
    results = []
    failed = False
    for template in templates:
        try:
            results.append(core.patch_template(template.text, **options))
        except TemplateSourceError as exc:
            err.line(f"error: {_located(exc, template)}", "red")
            return EXIT_USAGE
        except PatchError as exc:
            failed = True
            err.line(f"{template.label}: cannot patch", "bold red")
            for reason in exc.reasons:
                err.line(f"  - {reason}")
    writes = args.output or args.in_place
    if failed:
        err.line("nothing written" if writes else "no template printed", "red")
        return EXIT_FAIL

    diff_out = out if writes else err
    for template, result in zip(templates, results):
        err.line(f"{template.label}: {result.status.replace('_', ' ')}", _STATUS_STYLE.get(result.status))
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
        return _write_in_place(templates, results, err)
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


# ------------------------------------------------------------------------------------------------------ check


def _cmd_check(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    from templatekit import formats

    fmt = "json" if args.json else args.format
    limits = _limits(args)
    outcomes = formats.check_sources(args.sources, check=lambda text: _core().check_template(text, **limits))
    if fmt == "json":
        out.raw(formats.to_json(outcomes))
    elif fmt == "github":
        out.raw(formats.to_github(outcomes))
    else:
        for outcome in outcomes:
            if outcome.status == "error":
                err.line(f"error: {outcome.summary}", "red")
            elif not (outcome.ok and args.quiet):
                out.line(f"{outcome.label}: {outcome.summary}", _STATUS_STYLE["ok" if outcome.ok else "FAILED"])
                for finding in outcome.findings:
                    out.line(f"  - {finding.message}")
    return formats.exit_code(outcomes)


# ----------------------------------------------------------------------------------------------------- report


_STATUSES = ("patched", "retagged", "already tagged", "not patchable")


@dataclass
class _Row:
    label: str
    status: str  # "patched", "retagged" (its own tags fail and were replaced), "already tagged" or "not patchable"
    reason: str = ""
    source: str = ""  # the file; with `name`, what --json reports
    name: str | None = None


def _first(reasons: Sequence[str]) -> str:
    if not reasons:
        return ""
    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return reasons[0] + more


def _classify(core, template: LoadedTemplate, train_roles: tuple[str, ...], limits: dict) -> _Row:
    from templatekit.limits import limit_scope

    row = _Row(template.label, "not patchable", source=str(template.origin or template.label), name=template.name)
    try:
        with limit_scope(**limits):  # one time and memory budget for all the work on this template
            return _classify_within(core, template, train_roles, row)
    except PatchError as exc:
        row.reason = _first(exc.reasons)
    except TemplateSourceError as exc:  # malformed, unsafe, or past a limit (TemplateLimitError)
        row.reason = _reason_of(exc)
    except Exception as exc:  # one broken template must not stop a report over hundreds
        row.reason = f"internal error: {type(exc).__name__}: {exc}"
    return row


def _classify_within(core, template: LoadedTemplate, train_roles: tuple[str, ...], row: _Row) -> _Row:
    if _TAG.search(template.text):
        report = core.check_template(template.text)
        if report.ok:
            row.status = "already tagged"
            return row
        # Its own tags fail verification: `check` fails it; `patch` replaces them by default.
        row.reason = "its generation tags fail verification: " + (_first(report.reasons) or "see check")
        try:
            core.patch_template(template.text, train_roles=train_roles, retag=True)
            row.status = "retagged"
        except PatchError as exc:
            row.reason += f"; replacing them fails too: {_first(exc.reasons)}"
        return row
    result = core.patch_template(template.text, train_roles=train_roles, retag=True)
    row.status = {"already_tagged": "already tagged"}.get(result.status, result.status)
    return row


def _progress(err: _Out, total: int, quiet: bool):
    """A rich progress bar on stderr when stderr is a terminal (and not --quiet); otherwise a no-op stand-in."""
    from contextlib import nullcontext

    if quiet or err._console is None or total < 2:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
        console=err._console,
        transient=True,  # the bar goes away when done; the table and summary stay
    )


def _cmd_report(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    try:
        files = find_template_files(args.paths)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    core = _core()
    train_roles = _train_roles(args)
    limits = _limits(args)
    rows: list[_Row] = []
    with _progress(err, len(files), args.quiet) as progress:
        task = progress.add_task("checking templates", total=len(files), current="") if progress else None
        for path in files:
            if progress is not None:
                progress.update(task, current=path.name)
            try:
                templates = load_templates(path)
            except NoChatTemplateError:
                templates = []  # a tokenizer_config.json without a chat template is not a template
            except TemplateSourceError as exc:
                rows.append(_Row(str(path), "not patchable", _reason_of(exc), source=str(path)))
                templates = []
            rows.extend(_classify(core, template, train_roles, limits) for template in templates)
            if progress is not None:
                progress.advance(task)

    counts = {status: sum(r.status == status for r in rows) for status in _STATUSES}
    if args.json:
        import json

        document = {
            "templates": [
                {"source": r.source, "name": r.name, "label": r.label, "status": r.status, "reason": r.reason}
                for r in rows
            ],
            "counts": counts,
            "total": len(rows),
        }
        out.raw(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return EXIT_OK
    shown = [r for r in rows if r.status in ("not patchable", "retagged")] if args.summary else rows
    if shown and not args.quiet:
        out.table(["template", "status", "reason"], [(r.label, r.status, r.reason) for r in shown], status_column=1)
    out.line(
        f"{counts['patched']} patched, {counts['retagged']} retagged, {counts['already tagged']} already tagged, "
        f"{counts['not patchable']} not patchable (of {len(rows)})"
    )
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------- show


def _cmd_show(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    """Render a conversation with the trained text (and tokens) marked: terminal, pipe or HTML page."""
    from templatekit import show
    from templatekit.errors import TemplateKitError
    from templatekit.policies import ConversationError

    try:
        templates = load_templates(args.source)
        messages, tools = show.load_messages(args.messages) if args.messages else (None, None)
        encode = show.load_tokenizer(args.tokenizer) if args.tokenizer else None
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    # One template is shown: the one --name picks, else the default one.
    wanted = args.name or "default"
    template = next((t for t in templates if t.name == wanted), None if args.name else templates[0])
    if template is None:
        names = ", ".join(t.name for t in templates)
        err.line(f"error: {args.source}: no template named {args.name!r} (found: {names})", "red")
        return EXIT_USAGE
    # The special tokens the model's own config names, as apply_chat_template would pass them.
    origin = template.origin if template.kind != "hub" else None
    folder = origin.parent if origin is not None else None
    if folder is None and args.tokenizer and Path(args.tokenizer).is_dir():
        folder = Path(args.tokenizer)
    try:
        rendering = show.render_conversation(
            template.text,
            messages,
            tools=tools,
            add_generation_prompt=args.add_generation_prompt,
            tokenizer=encode,
            fallback=True if args.fallback else None,
            **_limits(args),
            **show.special_tokens(folder),
        )
    except ConversationError as exc:
        err.line(f"error: {args.messages or 'the demo conversations'}: {exc}", "red")
        return EXIT_USAGE
    except TemplateSourceError as exc:
        err.line(f"error: {_located(exc, template)}", "red")
        return EXIT_USAGE
    except TemplateKitError as exc:
        err.line(f"{template.label}: cannot tell what is trained", "bold red")
        for reason in getattr(exc, "reasons", None) or [str(exc)]:
            err.line(f"  - {reason}")
        return EXIT_FAIL
    for note in rendering.notes:
        err.line(f"note: {note}", "dim")
    err.line(f"{template.label}: {show.summary(rendering)}")
    if args.html:
        write_text_atomic(args.html, show.to_html(rendering, template.label))
        err.line(f"wrote {args.html}")
    elif out.tty and out._console is not None:
        out._console.print(show.to_rich(rendering))
    else:
        out.raw(show.to_plain(rendering) + "\n")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------ apply


def _cmd_apply(args: argparse.Namespace, out: _Out, err: _Out) -> int:
    """Give a model without a chat template (or, with --force, any model) a template from the library."""
    from types import SimpleNamespace

    from templatekit.library import UnknownTemplateError, get_template

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

    report = _core().check_template(text)  # the library is tested; this guards a damaged installation
    if not report.ok:
        err.line(f"library template {args.template_format!r} fails verification:", "bold red")
        for reason in report.reasons:
            err.line(f"  - {reason}")
        return EXIT_FAIL
    err.line(f"{args.template_format}: verification {report.summary()}")

    if args.in_place:
        default = [t for t in existing if t.name == "default"]
        if default:  # --force: replace the template where the model keeps it, with a backup
            return _write_in_place(default, [SimpleNamespace(template=text)], err)
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


# ----------------------------------------------------------------------------------------------------- parser


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (e.g. 10 or 2.5)")
    return seconds


def _size(text: str) -> int:
    from templatekit.limits import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M or 1G)")
    return size


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the `templatekit` command."""
    parser = argparse.ArgumentParser(
        prog="templatekit",
        description="Make chat templates trainable: insert verified {% generation %} tags around assistant output.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def limit_options(sub: argparse.ArgumentParser) -> None:
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

    def train_role(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--train-role",
            dest="train_roles",
            action="append",
            metavar="ROLE",
            help="a role whose messages are trained (repeat for several; default: assistant)",
        )

    patch = commands.add_parser(
        "patch",
        help="insert generation tags and verify the result",
        description="Patch a template (a .jinja file, tokenizer_config.json, chat_template.json, model folder, GGUF "
        "file or Hugging Face Hub model id) and verify it renders byte-identically. Prints the patched template "
        "(--stdout, the default), writes it with -o, or updates a local model in place with --in-place.",
    )
    patch.add_argument("source", metavar="SOURCE")
    patch.add_argument("--revision", metavar="REV", help="for a Hub id: the branch, tag or commit (default: main)")
    written = patch.add_mutually_exclusive_group()
    written.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write the patched template here (a folder: chat_template.jinja + additional_chat_templates/; "
        "NEW.gguf from a GGUF source: a new GGUF file with the patched templates)",
    )
    written.add_argument("--stdout", action="store_true", help="print the patched template (the default)")
    written.add_argument(
        "--in-place",
        action="store_true",
        help="update the local model folder or file where it keeps its template, with a .bak backup",
    )
    patch.add_argument("--diff", action="store_true", help="show the unified diff from the original")
    patch.add_argument("--name", help="patch only the named template (e.g. tool_use)")
    train_role(patch)
    patch.add_argument("--only-last-turn", action="store_true", help="train only the last assistant turn")
    tags = patch.add_mutually_exclusive_group()
    tags.add_argument(
        "--keep-tags",
        action="store_true",
        help="refuse a template whose own generation tags fail verification (by default they are replaced)",
    )
    tags.add_argument("--retag", action="store_true", help=argparse.SUPPRESS)  # the default since 0.2; kept working
    patch.add_argument("--force", action="store_true", help="allow -o to overwrite the input file")
    limit_options(patch)
    patch.set_defaults(func=_cmd_patch)

    check = commands.add_parser(
        "check",
        help="exit 0 only if every template carries generation tags that pass verification",
        description="Check templates for CI and pre-commit: every template of every SOURCE must carry generation "
        "tags that pass verification.",
        epilog="exit codes: 0 every template is tagged and verified; 1 findings (a template has no tags, or its tags "
        "fail verification); 2 usage or input error (a source is missing, unreadable or malformed)",
    )
    check.add_argument("sources", nargs="+", metavar="SOURCE")
    check.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text (default); json: one machine-readable document on stdout; github: GitHub Actions annotations "
        "(::error file=…,line=…) pointing at the template's file and line",
    )
    check.add_argument("--json", action="store_true", help="the same as --format json")
    check.add_argument("-q", "--quiet", action="store_true", help="text format: print only the templates that fail")
    limit_options(check)
    check.set_defaults(func=_cmd_check)

    show_cmd = commands.add_parser(
        "show",
        help="render a conversation with the trained text highlighted",
        description="Render a conversation (a built-in demo with system, user, tool call and answer when --messages "
        "is not given) with SOURCE's template and highlight what training would learn: the spans of the verified "
        "patched template, or of the delimiter fallback when it cannot be patched. With --tokenizer, token "
        "boundaries are shown too. In a terminal: colours; in a pipe: trained runs between ⟦ ⟧, token starts "
        "marked ¦; --html OUT: a self-contained page.",
    )
    show_cmd.add_argument("source", metavar="SOURCE")
    show_cmd.add_argument("--name", help="the named template to show (e.g. tool_use)")
    show_cmd.add_argument(
        "--messages", metavar="CONV.json", help='a JSON list of messages, or {"messages": [...], "tools": [...]}'
    )
    show_cmd.add_argument("--tokenizer", metavar="SOURCE", help="a local tokenizer folder or tokenizer.json")
    show_cmd.add_argument("--html", metavar="OUT", help="write a self-contained HTML page here instead")
    show_cmd.add_argument("--add-generation-prompt", action="store_true", help="render with the generation prompt")
    show_cmd.add_argument(
        "--fallback", action="store_true", help="show what the delimiter fallback trains, even for a patchable template"
    )
    limit_options(show_cmd)
    show_cmd.set_defaults(func=_cmd_show)

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
    apply.set_defaults(func=_cmd_apply)

    report = commands.add_parser(
        "report",
        help="classify every template under the given paths",
        description="Find every *.jinja, tokenizer_config.json and chat_template.json under PATH and classify each "
        "as patched, retagged (its own tags fail verification and were replaced), already tagged or not patchable.",
    )
    report.add_argument("paths", nargs="+", metavar="PATH")
    report.add_argument("--summary", action="store_true", help="list only the templates that are not ok")
    report.add_argument(
        "-q", "--quiet", action="store_true", help="print only the summary line (no table, no progress bar)"
    )
    report.add_argument("--json", action="store_true", help="one JSON document on stdout: every template, counts")
    train_role(report)
    limit_options(report)
    report.set_defaults(func=_cmd_report)
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
    out, err = _Out(sys.stdout), _Out(sys.stderr)
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
