"""What `templatekit check` found, in the shapes CI reads: plain text, one JSON document, GitHub annotations.

`check_sources` turns sources into one `CheckOutcome` per template (or per unreadable source), with every
finding placed in the file the user edits: a `.jinja` file's own line and column, or, for a template stored in
a JSON file (`tokenizer_config.json`, `chat_template.json`), the line and column inside the JSON string that
holds it. `to_json` and `to_github` render the outcomes; `exit_code` gives the documented status:

    0  every template carries generation tags that pass verification
    1  findings: a template has no tags, or its tags fail verification
    2  usage or input error: a source is missing, unreadable or malformed
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PatchError, TemplateSourceError
from ..sources import MAX_CONFIG_BYTES, LoadedTemplate, load_templates, read_file_bytes
from ..sources.json_positions import string_offsets, value_start
from ..sources.local import file_identity

if TYPE_CHECKING:
    from ..core.report import Report

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_INPUT_ERROR",
    "EXIT_OK",
    "CheckOutcome",
    "Finding",
    "check_sources",
    "exit_code",
    "github_escape_data",
    "github_escape_property",
    "to_github",
    "to_json",
]

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT_ERROR = 0, 1, 2
NO_TAGS = "the template carries no {% generation %} tags; `templatekit patch` adds verified ones"


@dataclass
class Finding:
    """One problem: a readable message and, when known, where it is in the file (1-based line and column)."""

    message: str
    line: int | None = None
    column: int | None = None


@dataclass
class CheckOutcome:
    """The verdict on one template, or on a source that could not be read (`status` "error", `name` None).

    `status` is "ok", "untagged" (no generation tags), "failed" (tags that fail verification) or "error".
    `line`/`column` point at the template in `source`: its first generation tag, else its first character.
    """

    source: str
    name: str | None
    label: str
    status: str
    findings: list[Finding] = field(default_factory=list)
    line: int | None = None
    column: int | None = None
    summary: str = ""
    notes: list[str] = field(default_factory=list)  # facts that are not findings (a history that differs)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ------------------------------------------------------------------------------------- positions in the file


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _offset_of(text: str, line: int, column: int) -> int:
    """The character offset of a 1-based line and column in `text` (clamped to the text)."""
    start = 0
    for _ in range(line - 1):
        newline = text.find("\n", start)
        if newline < 0:
            return len(text)
        start = newline + 1
    return min(start + max(column, 1) - 1, len(text))


class _Locator:
    """Maps a position in a template's text to a position in the file the template was read from."""

    def __init__(self, template: LoadedTemplate):
        self.template = template
        self.file_text: str | None = None
        self.offsets: list[int] | None = None  # decoded character -> file offset, for a template inside JSON
        origin = template.origin
        if origin is None or template.kind not in ("jinja", "tokenizer_config", "chat_template_json"):
            return  # a Hub cache file or a GGUF file: no line a person edits
        try:  # bounded, and a regular file only (it may have been swapped since it was loaded)
            self.file_text = read_file_bytes(origin, MAX_CONFIG_BYTES).decode("utf-8")
        except (TemplateSourceError, UnicodeDecodeError):
            return
        if template.kind == "jinja":
            return
        try:
            field_value = json.loads(self.file_text)["chat_template"]
            path: list[str | int] = ["chat_template"]
            if isinstance(field_value, list):
                names = [entry.get("name") if isinstance(entry, dict) else None for entry in field_value]
                path += [names.index(template.name), "template"]
            start = value_start(self.file_text, path)
        except (ValueError, KeyError, TypeError, IndexError):
            start = None
        if start is not None and self.file_text[start] == '"':
            self.offsets = string_offsets(self.file_text, start)
        else:
            self.file_text = None

    def at_offset(self, offset: int) -> tuple[int | None, int | None]:
        """The file's line and column for a character offset in the template text."""
        if self.file_text is None:
            return None, None
        if self.offsets is not None:
            offset = self.offsets[min(offset, len(self.offsets) - 1)]
        return _line_column(self.file_text, offset)

    def at(self, line: int | None, column: int | None) -> tuple[int | None, int | None]:
        """The file's line and column for a line and column in the template text (anchor when unknown)."""
        if line is None:
            return None, None
        return self.at_offset(_offset_of(self.template.text, line, column or 1))

    def anchor(self) -> tuple[int | None, int | None]:
        """Where a finding about the whole template points: its first generation tag, else its first character."""
        from ..core.tags import first_start_tag  # on use: jinja2 is not loaded for --help

        tag = first_start_tag(self.template.text)
        return self.at_offset(tag if tag is not None else 0)


# ------------------------------------------------------------------------------------------------- checking


def _error_outcome(source: str, exc: TemplateSourceError) -> CheckOutcome:
    where = exc.source if exc.source not in (None, "", "<template>") else source
    finding = Finding(exc.message, exc.line, exc.column)
    return CheckOutcome(where, None, where, "error", [finding], exc.line, exc.column, str(exc))


def _template_outcome(template: LoadedTemplate, check: Callable[[str], Report]) -> CheckOutcome:
    locator = _Locator(template)
    source = str(template.origin) if template.origin is not None else template.label
    outcome = CheckOutcome(source, template.name, template.label, "ok")
    outcome.line, outcome.column = locator.anchor()
    try:
        report = check(template.text)
    except TemplateSourceError as exc:
        line, column = locator.at(exc.line, exc.column)
        outcome.status = "error"
        outcome.findings.append(Finding(exc.message, line, column))
        outcome.line, outcome.column = line or outcome.line, column or outcome.column
        outcome.summary = f"{template.label}:{line}:{column}: {exc.message}" if line else f"{template.label}: {exc}"
        return outcome
    except PatchError as exc:  # tags present, but the template renders no probe to verify them with
        outcome.status = "failed"
        outcome.findings = [Finding(reason) for reason in exc.reasons or ["generation tags cannot be verified"]]
        outcome.summary = f"FAILED: cannot verify the generation tags: {exc.reasons[0] if exc.reasons else exc}"
        return outcome
    outcome.summary = report.summary()
    if getattr(report, "history_mismatch", None):
        outcome.notes.append(report.history_mismatch)
    # The settings of the template's switches the verdict covers, and what is accepted though imprecise.
    outcome.notes += [note for note in report.notes if note.startswith(("verified under every setting", "imprecise:"))]
    if not report.ok:
        outcome.status = "failed" if report.tagged else "untagged"
        reasons = report.reasons if report.tagged else [NO_TAGS]
        outcome.findings = [Finding(reason) for reason in reasons or ["generation tags fail verification"]]
    return outcome


def check_sources(sources: Iterable[str | Path], check: Callable[[str], Report] | None = None) -> list[CheckOutcome]:
    """Check every template of every source, each once; a source that cannot be read becomes one "error" outcome.

    Example:
        [(o.label, o.status) for o in check_sources(["chat_template.jinja"])]
        # [('chat_template.jinja', 'untagged')]
    """
    if check is None:
        from ..core.pipeline import check_template as check
    outcomes: list[CheckOutcome] = []
    seen: set[object] = set()  # a template reached twice (a folder and a file in it, a link) is checked once
    for source in sources:
        try:
            templates = load_templates(source)
        except TemplateSourceError as exc:
            if (key := ("error", str(source))) not in seen:
                seen.add(key)
                outcomes.append(_error_outcome(str(source), exc))
            continue
        for template in templates:
            key = (file_identity(template.origin) if template.origin is not None else template.label, template.name)
            if key not in seen:
                seen.add(key)
                outcomes.append(_template_outcome(template, check))
    return outcomes


def exit_code(outcomes: Iterable[CheckOutcome]) -> int:
    """0 when every outcome is ok, 2 when any source or template could not be read, 1 otherwise.

    Example:
        >>> exit_code([CheckOutcome("a.jinja", "default", "a.jinja", "ok")])
        0
    """
    statuses = {outcome.status for outcome in outcomes}
    if "error" in statuses:
        return EXIT_INPUT_ERROR
    return EXIT_OK if statuses <= {"ok"} else EXIT_FINDINGS


# ---------------------------------------------------------------------------------------------------- JSON


def to_json(outcomes: list[CheckOutcome]) -> str:
    """One JSON document: the exit code, counts per status, and every template with its findings.

    Example:
        >>> doc = json.loads(to_json([CheckOutcome("a.jinja", "default", "a.jinja", "untagged", [Finding("no tags")])]))
        >>> doc["exit_code"], doc["templates"][0]["reasons"][0]["message"]
        (1, 'no tags')
    """
    templates = []
    for outcome in outcomes:
        entry = {key: value for key, value in asdict(outcome).items() if key != "findings"}
        entry["ok"] = outcome.ok
        entry["reasons"] = [asdict(finding) for finding in outcome.findings]
        templates.append(entry)
    counts = {status: 0 for status in ("ok", "untagged", "failed", "error")}
    for outcome in outcomes:
        counts[outcome.status] += 1
    code = exit_code(outcomes)
    document = {"ok": code == EXIT_OK, "exit_code": code, "counts": counts, "templates": templates}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# -------------------------------------------------------------------------------------------------- GitHub


def github_escape_data(text: str) -> str:
    """Escape a workflow command's message: `%`, CR and LF (GitHub decodes `%25`, `%0D`, `%0A`).

    Example:
        >>> github_escape_data("50% off\\nnow")
        '50%25 off%0Anow'
    """
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_escape_property(text: str) -> str:
    """Escape a workflow command's property value: as data, plus `:` and `,`, which separate properties.

    Example:
        >>> github_escape_property("a:b,c")
        'a%3Ab%2Cc'
    """
    return github_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _workspace_path(source: str) -> str:
    """The path as GitHub wants it: relative to the working folder (the checkout) when inside it."""
    try:
        relative = os.path.relpath(source)
    except ValueError:  # another drive on Windows
        return source
    return Path(relative if not relative.startswith("..") else source).as_posix()


def _annotation(outcome: CheckOutcome, message: str, line: int | None, column: int | None) -> str:
    properties = []
    if outcome.source and Path(outcome.source).exists():
        properties.append(f"file={github_escape_property(_workspace_path(outcome.source))}")
        if line is not None:
            properties.append(f"line={line}")
            if column is not None:
                properties.append(f"col={column}")
    title = {
        "untagged": "no generation tags",
        "failed": "generation tags fail verification",
        "error": "cannot read template",
    }[outcome.status]
    if outcome.name not in (None, "default"):
        title = f"template {outcome.name!r}: {title}"
    properties.append(f"title={github_escape_property(f'templatekit: {title}')}")
    return f"::error {','.join(properties)}::{github_escape_data(message)}"


def to_github(outcomes: list[CheckOutcome]) -> str:
    """GitHub Actions workflow commands: one `::error` annotation per finding that has its own place, and one
    per template for the findings that concern it as a whole (joined, so a long list stays one annotation),
    then a plain summary line.

    Example:
        >>> missing = CheckOutcome("missing.jinja", None, "missing.jinja", "error", [Finding("no such file")])
        >>> print(to_github([missing]), end="")
        ::error title=templatekit%3A cannot read template::no such file
        templatekit: 0 ok, 0 untagged, 0 failed, 1 error
    """
    lines = []
    for outcome in outcomes:
        if outcome.ok:
            continue
        placed = [finding for finding in outcome.findings if finding.line is not None]
        general = [finding.message for finding in outcome.findings if finding.line is None]
        for finding in placed:
            lines.append(_annotation(outcome, finding.message, finding.line, finding.column))
        if general:
            lines.append(_annotation(outcome, "\n".join(general), outcome.line, outcome.column))
    count = {status: sum(o.status == status for o in outcomes) for status in ("ok", "untagged", "failed", "error")}
    errors = "error" if count["error"] == 1 else "errors"
    lines.append(
        f"templatekit: {count['ok']} ok, {count['untagged']} untagged, {count['failed']} failed, "
        f"{count['error']} {errors}"
    )
    return "\n".join(lines) + "\n"
