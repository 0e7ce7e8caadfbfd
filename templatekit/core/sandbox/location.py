"""Where in the template a limit was reached: the line (and column, for templates parsed with offsets) that a
`TemplateLimitError` names."""

from __future__ import annotations

import sys

import jinja2

from ...errors import TemplateLimitError


def _template_frame(tb=None):
    """The innermost frame running a compiled template: from a traceback, or from the current stack."""
    found = None
    if tb is not None:
        while tb is not None:
            if "__jinja_template__" in tb.tb_frame.f_globals:
                found = (tb.tb_frame, tb.tb_lineno)
            tb = tb.tb_next
        return found
    frame = sys._getframe(2)
    for _ in range(64):
        if frame is None:
            return None
        if "__jinja_template__" in frame.f_globals:
            return frame, frame.f_lineno
        frame = frame.f_back
    return None


def _located_error(limit: str, detail: str, line: int, offset: int, tb=None) -> TemplateLimitError:
    column = None
    found = _template_frame(tb)
    template = found[0].f_globals["__jinja_template__"] if found else None
    if not line and found:
        try:
            line = template.get_corresponding_lineno(found[1])
        except Exception:  # noqa: BLE001 - a place is a courtesy
            line = 0
    source = getattr(template, "tk_source", None)
    if offset >= 0 and isinstance(source, str) and offset <= len(source):
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return TemplateLimitError(limit, detail, line=line or None, column=column)


def attach_source(template: jinja2.Template, source: str) -> jinja2.Template:
    """Let errors in `template` (compiled from an AST parsed out of `source`) name their column."""
    template.tk_source = source  # type: ignore[attr-defined]
    return template
