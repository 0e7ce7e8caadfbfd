"""`patch` and `strip` with `--format json|github`: what each template came to, as one JSON document or as GitHub
Actions annotations on stdout (the human lines stay on stderr).

JSON holds, per template, its `status` (`patched`, `retagged`, `already_tagged`, `stripped`, `unchanged`,
`refused`, `error`), the verifier's summary and notes, a refusal's every reason with its kind, place and advice, and
the rewritten template itself when it was not written to a file. GitHub gets one `::error` per refused template at
the place the refusal points to, and one `::notice` per template rewritten.
"""

from __future__ import annotations

import json
from typing import Any

from ..sources import LoadedTemplate
from .check_formats import github_escape_data, github_escape_property

__all__ = ["outcome", "to_github", "to_json"]


def outcome(
    template: LoadedTemplate,
    status: str,
    *,
    summary: str = "",
    notes: list[str] | None = None,
    reasons: list[str] | None = None,
    text: str | None = None,
    diff: str | None = None,
) -> dict[str, Any]:
    """One template's entry: where it came from, its status, and what the verifier said (a refusal explained by
    `templatekit.core.refusal`).

    Example:
        >>> entry = outcome(LoadedTemplate("default", "{{ x }}", None, "jinja"), "refused",
        ...                 reasons=["no trained message is rendered"])
        >>> entry["status"], entry["refusal"]["kind"]
        ('refused', 'no message of the trained roles is written by the template')
    """
    entry: dict[str, Any] = {
        "source": str(template.origin) if template.origin is not None else template.label,
        "name": template.name,
        "status": status,
        "summary": summary,
        "notes": list(notes or []),
        "reasons": list(reasons or []),
    }
    if reasons and status == "refused":
        from ..core.refusal import explain  # on use: --help loads nothing of the core

        refusal = explain(reasons, template.text)
        line, column = refusal.where or (None, None)
        entry["refusal"] = {"kind": refusal.kind, "line": line, "column": column, "advice": refusal.advice}
    if text is not None:
        entry["template"] = text
    if diff is not None:
        entry["diff"] = diff
    return entry


def to_json(command: str, entries: list[dict[str, Any]], exit_code: int) -> str:
    """The document: the command, its exit code, and every template's entry."""
    return json.dumps({"command": command, "exit_code": exit_code, "templates": entries}, indent=2) + "\n"


def to_github(command: str, entries: list[dict[str, Any]]) -> str:
    """One annotation per template (an error where a refusal points, a notice for a template rewritten), then a
    summary line."""
    lines = []
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        place = f"file={github_escape_property(entry['source'])}"
        refusal = entry.get("refusal")
        if refusal and refusal["line"] is not None and entry["source"].endswith(".jinja"):
            place += f",line={refusal['line']},col={refusal['column']}"
        if entry["status"] in ("refused", "error"):
            message = refusal["kind"] + "; what to do: " + refusal["advice"] if refusal else "; ".join(entry["reasons"])
            title = github_escape_property(f"templatekit {command}: cannot {command}")
            lines.append(f"::error {place},title={title}::{github_escape_data(message)}")
        else:
            title = github_escape_property(f"templatekit {command}: {entry['status'].replace('_', ' ')}")
            lines.append(f"::notice {place},title={title}::{github_escape_data(entry['summary'] or entry['status'])}")
    tally = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(counts.items()))
    lines.append(f"templatekit {command}: {tally}")
    return "\n".join(lines) + "\n"
