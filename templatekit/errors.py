"""Errors raised by templatekit, each naming what went wrong and where."""

from __future__ import annotations


class TemplateKitError(Exception):
    """Base class for every error templatekit raises on purpose."""


class TemplateSourceError(TemplateKitError):
    """A template could not be read or parsed: names the file, line and column when known.

    Example:
        >>> str(TemplateSourceError("unexpected '}'", source="chat.jinja", line=3, column=7))
        "chat.jinja:3:7: unexpected '}'"
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, column: int | None = None):
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        where = ":".join(str(part) for part in (source or "<template>", line, column) if part is not None)
        super().__init__(f"{where}: {message}")


class PatchError(TemplateKitError):
    """No verified patch could be made; `.reasons` says why, one readable line each."""

    def __init__(self, reasons: list[str], *, report=None):
        self.reasons = list(reasons)
        self.report = report
        super().__init__("cannot patch template: " + "; ".join(self.reasons))
