"""`templatekit audit`: check a JSONL dataset against a template before training: what trains, what is dropped.

Exit codes: 0 nothing wrong; 1 a row trains nothing or loses data (a field the template never renders, a
conversation it rejects, trained tokens cut by --max-length); 2 bad usage or unreadable input (a bad JSONL line
is named `file:line: message`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, NotTrainableError, TemplateSourceError
from ..sources import LoadedTemplate, load_templates
from ..sources.reading import read_text_lines
from .check_formats import github_escape_data, github_escape_property
from .console import EXIT_FAIL, EXIT_USAGE, Console
from .options import (
    add_format,
    add_limit_options,
    add_template_kwargs,
    add_train_role,
    isolated,
    limits,
    located,
    output_format,
    template_kwargs,
    train_roles,
)

__all__ = ["add_parser", "read_jsonl", "run"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
#: Bad rows listed in the text format (`--format json` lists every one).
SHOWN_BAD_ROWS = 20


def read_jsonl(path: str | Path, messages_field: str = "messages") -> tuple[list[dict], list[int]]:
    """The rows of a JSONL file and the line number of each; a `TemplateSourceError` names `file:line` for a bad
    line. Read within bounds (`sources.read_text_lines`): a regular file, its size checked before it is read."""
    rows, lines = [], []
    for number, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TemplateSourceError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=str(path), line=number
            ) from None
        except RecursionError:
            raise TemplateSourceError(
                "cannot read the JSON: it nests deeper than Python can read", source=str(path), line=number
            ) from None
        except ValueError as exc:  # a number of more digits than Python converts (4,300 by default)
            raise TemplateSourceError(
                f"cannot read the JSON: {_first_clause(exc)}", source=str(path), line=number
            ) from None
        if not isinstance(row, dict):
            raise TemplateSourceError(
                f"expected a JSON object, got {type(row).__name__}", source=str(path), line=number
            )
        if not isinstance(row.get(messages_field), list):
            raise TemplateSourceError(
                f"expected a list of messages under {messages_field!r}", source=str(path), line=number
            )
        if "\\u" in line and (where := _lone_surrogate(row)):
            raise TemplateSourceError(
                f"{where} holds a lone surrogate: not Unicode text", source=str(path), line=number
            )
        rows.append(row)
        lines.append(number)
    if not rows:
        raise TemplateSourceError("no conversation in the file", source=str(path))
    return rows, lines


def _first_clause(error: BaseException) -> str:
    """The error's message up to its first `;` (Python's advice on its own settings is no use here)."""
    return str(error).split(";")[0].strip() or type(error).__name__


def _lone_surrogate(row: Any) -> str | None:
    """Where a string of the row holds a lone surrogate (JSON's `\\ud800` escape alone), which no tokenizer, file
    or terminal takes as text; None when none does."""
    stack: list[tuple[Any, str]] = [(row, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "the row"
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path or "a key"))
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(value))
    return None


def _load_tokenizer(path: Path) -> Any:
    """A fast tokenizer from a local folder (AutoTokenizer, local files only) or a tokenizer.json file."""
    try:
        if path.is_file() and path.suffix == ".json":
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        elif path.is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        else:
            raise TemplateSourceError("no such tokenizer folder or tokenizer.json file", source=str(path))
    except TemplateSourceError:
        raise
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TemplateSourceError(f"cannot load a tokenizer: {first}", source=str(path)) from None
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateSourceError("a fast tokenizer is needed (its offsets place the trained tokens)", source=str(path))
    return tokenizer


def _source_tokenizer_folder(template: LoadedTemplate) -> Path | None:
    """The folder next to the template that holds tokenizer files (a model folder, a Hub snapshot), if any."""
    if template.origin is None or template.kind == "gguf":
        return None
    folder = template.origin.parent
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return folder
    return None


def _choose(args: argparse.Namespace, templates: list[LoadedTemplate]) -> LoadedTemplate:
    wanted = args.name or "default"
    template = next((t for t in templates if t.name == wanted), None if args.name else templates[0])
    if template is None:
        names = ", ".join(t.name for t in templates)
        raise TemplateSourceError(f"no template named {args.name!r} (found: {names})", source=str(args.source))
    return template


def _progress(err: Console, total: int, enabled: bool) -> Any:
    """A transient rich progress bar on stderr when it is a terminal; otherwise None."""
    if not enabled or err.rich is None or total < 2:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("auditing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err.rich,
        transient=True,
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _print_text(out: Console, document: dict[str, Any], label: str, data: str) -> None:
    unit = document["unit"]
    trained = document["trained_tokens"]
    found = "generation tags" if document["mode"] == "tags" else "delimiter fallback"
    out.line(f"{data} against {label} (trained spans from {found})")
    out.line(f"rows: {document['rows']}")
    out.line(
        f"trained {unit} per row: min {_fmt(trained['min'])}, median {_fmt(trained['median'])}, "
        f"max {_fmt(trained['max'])}"
    )
    out.line(f"rows without trained {unit}: {document['rows_without_trained_tokens']}")
    if document["max_length"] is not None:
        out.line(
            f"rows truncated (longer than {document['max_length']} tokens): {document['rows_truncated']}, "
            f"losing trained tokens: {document['rows_truncated_losing_trained_tokens']}"
        )
    lost = document["fields_not_rendered"]
    out.line("fields the template never renders: " + (", ".join(f"{k} ({v})" for k, v in lost.items()) or "none"))
    roles = document["unknown_roles"]
    out.line("unknown roles: " + (", ".join(f"{k} ({v})" for k, v in roles.items()) or "none"))
    out.line(f"conversations rejected: {document['rejected_conversations']}")
    for note in document["notes"]:
        out.line(f"note: {note}", "dim")
    if document["problems"]:
        out.line("problems:", "bold red" if document["exit_code"] else "yellow")
        for problem in document["problems"]:
            out.line(f"  - {problem}")
    else:
        out.line("no problems found", "green")
    bad = document["bad_rows"]
    if bad:
        out.line(f"bad rows: {document['bad_row_count']} ({len(bad)} problems)", "bold red")
        for entry in bad[:SHOWN_BAD_ROWS]:
            out.line(f"  {entry['row']}: {entry['problem']}")
        if len(bad) > SHOWN_BAD_ROWS:
            out.line(f"  … and {len(bad) - SHOWN_BAD_ROWS} more (--format json lists every one)")


def _to_github(document: dict[str, Any]) -> str:
    """An `::error file=DATA,line=N::problem` annotation per bad row, then the summary problems as one line each."""
    lines = []
    for entry in document["bad_rows"]:
        data, _, line = entry["row"].rpartition(":")
        properties = [f"file={github_escape_property(data)}", f"line={line}"] if line.isdigit() else []
        properties.append(f"title={github_escape_property('templatekit audit: bad row')}")
        lines.append(f"::error {','.join(properties)}::{github_escape_data(entry['problem'])}")
    lines.append(
        f"templatekit audit: {document['rows']} rows, {document['bad_row_count']} bad, exit {document['exit_code']}"
    )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Audit the JSONL data against SOURCE's template; print text or one JSON document; the exit code."""
    from ..training.audit import audit_conversations  # on use: loads the renderer (and jinja2, transformers)
    from .highlight import special_tokens

    try:
        rows, lines = read_jsonl(args.data)
        template = _choose(args, load_templates(args.source))
        folder = _source_tokenizer_folder(template)
        tokenizer_path = Path(args.tokenizer) if args.tokenizer else folder
        tokenizer = _load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
        if args.max_length is not None and tokenizer is None:
            raise InvalidArgumentError("--max-length counts tokens: pass --tokenizer PATH (SOURCE holds no tokenizer)")
    except (TemplateSourceError, InvalidArgumentError) as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    render_kwargs = special_tokens(folder if folder is not None else tokenizer_path)
    if tokenizer is not None:
        render_kwargs.update({k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)})
    names = [f"{args.data}:{line}" for line in lines]
    progress = _progress(err, len(rows), output_format(args) == "text")
    options = dict(
        tokenizer=tokenizer,
        max_length=args.max_length,
        truncation=args.truncation,
        train_roles=train_roles(args),
        render_kwargs=render_kwargs,
        template_kwargs=template_kwargs(args),
        row_names=names,
        **limits(args),
    )

    def audit() -> Any:  # in a child process under hard limits, its progress bar drawn from there
        if progress is None:
            return audit_conversations(template.text, rows, **options)
        with progress:
            task = progress.add_task("audit", total=len(rows))
            return audit_conversations(template.text, rows, on_row=lambda _: progress.advance(task), **options)

    try:
        report = isolated(args, audit, operations=None)  # each row under the limits on its own
    except InvalidArgumentError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    except TemplateSourceError as exc:
        err.line(f"error: {located(exc, template)}", "red")
        return EXIT_USAGE
    except NotTrainableError as exc:
        err.line(f"{template.label}: cannot tell what is trained", "bold red")
        for reason in exc.reasons or [str(exc)]:
            err.line(f"  - {reason}")
        return EXIT_FAIL
    document = {
        "source": str(args.source),
        "template": template.label,
        "data": str(args.data),
        "tokenizer": str(tokenizer_path) if tokenizer is not None else None,
        **report.to_dict(),
    }
    fmt = output_format(args)
    if fmt == "json":
        out.raw(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "github":
        out.raw(_to_github(document))
    else:
        _print_text(out, document, template.label, str(args.data))
    return report.exit_code


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number of tokens: {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `audit` command."""
    audit = commands.add_parser(
        "audit",
        help="check a JSONL dataset against a template: trained tokens, dropped fields, rejected rows",
        description='Render every conversation of a JSONL file (one {"messages": [...], "tools": [...]} per line, '
        "optionally with TRL's per-row \"chat_template_kwargs\") with SOURCE's template, patched as `patch` does, "
        "and report the trained tokens per row, rows that train nothing, rows longer than --max-length, message "
        "fields the template never renders (a `thinking` key where it reads `reasoning_content`, tool calls it "
        "ignores), unknown roles and conversations it rejects. Tokens are counted with --tokenizer, or the "
        "tokenizer SOURCE's folder holds; characters otherwise. Exit 1 when a row trains nothing or loses data, 0 "
        "otherwise, 2 for bad input.",
    )
    audit.add_argument("source", metavar="SOURCE")
    audit.add_argument("--data", required=True, metavar="FILE.jsonl", help="the conversations, one JSON object a line")
    audit.add_argument("--name", help="the named template to audit with (e.g. tool_use)")
    audit.add_argument(
        "--tokenizer", metavar="PATH", help="a local tokenizer folder or tokenizer.json (default: SOURCE's, if any)"
    )
    audit.add_argument("--max-length", type=_positive, metavar="N", help="count rows longer than N tokens")
    audit.add_argument(
        "--truncation",
        choices=("right", "left", "drop"),
        default="right",
        help="how rows longer than --max-length are cut, as prepare_dataset does (default: right)",
    )
    add_format(audit, "the counts, the problems and every bad row")
    add_train_role(audit)
    add_template_kwargs(audit)
    add_limit_options(audit)
    audit.set_defaults(func=run)
