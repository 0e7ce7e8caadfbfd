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


class TemplateLimitError(TemplateSourceError):
    """A template went past a resource limit (time, memory or recursion) while it was rendered.

    `.limit` names the limit (`"time"`, `"memory"` or `"recursion"`); `.line` and `.column` say where in the
    template it happened, when known. A template that needs more than the limits allow is refused like a
    malformed one (it is a `TemplateSourceError`), so every command reports it as one line.

    Example:
        >>> error = TemplateLimitError("time", "the template ran past 10 s", line=2, column=4)
        >>> str(error), error.limit
        ('<template>:2:4: time limit exceeded: the template ran past 10 s', 'time')
    """

    def __init__(
        self,
        limit: str,
        detail: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ):
        self.limit = limit
        self.detail = detail
        super().__init__(f"{limit} limit exceeded: {detail}", source=source, line=line, column=column)

    def __reduce__(self):  # picklable across datasets' worker processes
        return (_rebuild_limit_error, (self.limit, self.detail, self.source, self.line, self.column))


def _rebuild_limit_error(limit, detail, source, line, column) -> TemplateLimitError:
    return TemplateLimitError(limit, detail, source=source, line=line, column=column)


class PatchError(TemplateKitError):
    """No verified patch could be made; `.reasons` says why, one readable line each."""

    def __init__(self, reasons: list[str], *, report=None):
        self.reasons = list(reasons)
        self.report = report
        super().__init__("cannot patch template: " + "; ".join(self.reasons))
