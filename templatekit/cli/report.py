"""`templatekit report`: classify every template under some paths (patched, retagged, already tagged, not
patchable), as a table, one JSON document or GitHub annotations; `--fail-on` turns classes into a failing exit
code for CI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NoChatTemplateError, PatchError, TemplateSourceError
from ..sources import LoadedTemplate, find_template_files, load_templates
from .check_formats import github_escape_data, github_escape_property
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Console
from .options import (
    add_format,
    add_limit_options,
    add_template_kwargs,
    add_train_role,
    isolated,
    output_format,
    public_api,
    reason_of,
    template_kwargs,
    train_roles,
)

__all__ = ["add_parser", "run"]

_STATUSES = ("patched", "retagged", "already tagged", "not patchable")
#: What `--fail-on` names, and the statuses each fails: "refused" a template that cannot be patched (or read),
#: "wrong" one whose own generation tags fail verification (`patch` replaces them; `check` fails it).
FAIL_ON = {"refused": ("not patchable",), "wrong": ("retagged",)}


@dataclass
class _Row:
    """One template's line in the report."""

    label: str
    status: str  # "patched", "retagged" (its own tags fail and were replaced), "already tagged" or "not patchable"
    reason: str = ""
    source: str = ""  # the file; with `name`, what --json reports
    name: str | None = None
    note: str = ""  # the template renders a past turn unlike the turn as generated (train with per_turn=True)


def _first(reasons: Sequence[str]) -> str:
    """The first of the reasons, in the user's words (`templatekit.core.refusal`), and how many more there are."""
    from ..core.refusal import explain  # on use: --help loads nothing of the core

    if not reasons:
        return ""
    grouped = explain(reasons).reasons
    more = len(reasons) - grouped[0][1]
    return grouped[0][0] + (f" (+{more} more)" if more else "")


def _classify(api: Any, template: LoadedTemplate, options: dict[str, Any], args: argparse.Namespace) -> _Row:
    row = _Row(template.label, "not patchable", source=str(template.origin or template.label), name=template.name)
    try:
        # One budget for all the work on this template, in a child process under hard limits: a template that
        # is killed there is one row, and the report goes on.
        return isolated(args, _classify_within, api, template, options, row)
    except PatchError as exc:
        row.reason = _first(exc.reasons)
    except TemplateSourceError as exc:  # malformed, unsafe, or past a limit (TemplateLimitError)
        row.reason = reason_of(exc)
    except Exception as exc:  # one broken template must not stop a report over hundreds
        row.reason = f"internal error: {type(exc).__name__}: {exc}"
    return row


def _classify_within(api: Any, template: LoadedTemplate, options: dict[str, Any], row: _Row) -> _Row:
    from ..core.tags import mentions_generation_tag  # on use: jinja2 is not loaded for --help

    if mentions_generation_tag(template.text):
        # Judged against the roles asked for: a template tagged for `--train-role bot` is already tagged for bot.
        report = api.check_template(template.text, **options)
        if report.ok:
            row.status = "already tagged"
            row.note = report.history_mismatch or ""
            return row
        # Its own tags fail verification: `check` fails it; `patch` replaces them by default.
        row.reason = "its generation tags fail verification: " + (_first(report.reasons) or "see check")
        try:
            api.patch_template(template.text, retag=True, **options)
            row.status = "retagged"
        except PatchError as exc:
            row.reason += f"; replacing them fails too: {_first(exc.reasons)}"
        return row
    # No tag at all, so the patch inserts tags: "patched" (a template already tagged is judged above).
    result = api.patch_template(template.text, retag=True, **options)
    row.status, row.note = result.status, result.report.history_mismatch or ""
    return row


def _short(note: str) -> str:
    """The table's form of a history note: what differs, and what to do."""
    return "note: history renders past turns unlike the turn as generated; train with per_turn=True" if note else ""


def _progress(err: Console, total: int, quiet: bool) -> Any:
    """A rich progress bar on stderr when stderr is a terminal (and not --quiet); otherwise a no-op stand-in."""
    from contextlib import nullcontext

    if quiet or err.rich is None or total < 2:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
        console=err.rich,
        transient=True,  # the bar goes away when done; the table and summary stay
    )


def _rows(args: argparse.Namespace, files: list, err: Console) -> list[_Row]:
    api = public_api()
    options = {"train_roles": train_roles(args), "template_kwargs": template_kwargs(args)}
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
                rows.append(_Row(str(path), "not patchable", reason_of(exc), source=str(path)))
                templates = []
            rows.extend(_classify(api, template, options, args) for template in templates)
            if progress is not None:
                progress.advance(task)
    return rows


def _to_github(rows: list[_Row], counts: dict[str, int]) -> str:
    """An `::error` annotation per template that cannot be patched, a `::warning` per retagged one, a summary."""
    lines = []
    for row in rows:
        if row.status not in ("not patchable", "retagged"):
            continue
        level = "error" if row.status == "not patchable" else "warning"
        title = github_escape_property(f"templatekit: {row.status}" + (f" ({row.name})" if row.name else ""))
        where = f"file={github_escape_property(row.source)}," if row.source and Path(row.source).exists() else ""
        lines.append(f"::{level} {where}title={title}::{github_escape_data(row.reason or row.status)}")
    lines.append("templatekit report: " + _summary(counts, len(rows)))
    return "\n".join(lines) + "\n"


def _summary(counts: dict[str, int], total: int) -> str:
    return (
        f"{counts['patched']} patched, {counts['retagged']} retagged, {counts['already tagged']} already tagged, "
        f"{counts['not patchable']} not patchable (of {total})"
    )


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Classify every template under the paths and print the table, one JSON document or annotations; exit 0, 1
    (a status `--fail-on` names) or 2 (a path that does not exist)."""
    try:
        files = find_template_files(args.paths)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    rows = _rows(args, files, err)
    counts = {status: sum(r.status == status for r in rows) for status in _STATUSES}
    failing = {status for name in args.fail_on or () for status in FAIL_ON[name]}
    code = EXIT_FAIL if any(r.status in failing for r in rows) else EXIT_OK
    fmt = output_format(args)
    if fmt == "json":
        document = {
            "templates": [
                {
                    "source": r.source,
                    "name": r.name,
                    "label": r.label,
                    "status": r.status,
                    "reason": r.reason,
                    "note": r.note,
                }
                for r in rows
            ],
            "counts": counts,
            "total": len(rows),
            "exit_code": code,
        }
        out.raw(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return code
    if fmt == "github":
        out.raw(_to_github(rows, counts))
        return code
    shown = [r for r in rows if r.status in ("not patchable", "retagged")] if args.summary else rows
    if shown and not args.quiet:
        out.table(
            ["template", "status", "reason"],
            [(r.label, r.status, r.reason or _short(r.note)) for r in shown],
            status_column=1,
        )
    out.line(_summary(counts, len(rows)))
    return code


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `report` command."""
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
    add_format(report, "every template's source, name, status and reason; the counts")
    report.add_argument(
        "--fail-on",
        action="append",
        choices=sorted(FAIL_ON),
        help="exit 1 when a template is refused (cannot be patched or read) or wrong (its own generation tags fail "
        "verification); repeat for both (default: exit 0 whatever the templates are)",
    )
    add_train_role(report)
    add_template_kwargs(report)
    add_limit_options(report)
    report.set_defaults(func=run)
