"""Parse a chat template into a jinja2 AST whose nodes know their exact source offsets.

jinja2 nodes carry line numbers only. We lex the source ourselves, find each token's offset, and hand the
parser tokens whose `lineno` is an `int` subclass (`Pos`) that also carries the offset. Every node the
parser builds from a token therefore remembers where it came from, and edits become text insertions into
the untouched original.

The environment mirrors the one transformers renders with (sandboxed, trim_blocks, lstrip_blocks,
loopcontrols, a `generation` tag, a non-escaping `tojson`), so whitespace and tags mean the same thing here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.lexer import TokenStream
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import TemplateSourceError
from .positions import Pos, line_column
from .sandbox import LimitedEnvironment, check_source_size, compile_cost, enabled
from .tags import GenerationTag

__all__ = [
    "PROBE_INSTANT",
    "ParsedTemplate",
    "Pos",
    "RawToken",
    "lf_line_ends",
    "line_column",
    "make_environment",
    "node_start",
    "parse_template",
    "probe_clock",
    "restore_line_ends",
    "strftime_now",
]


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' filter: no HTML escaping, unlike jinja2's own tojson.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# Probe renders (patching, verifying, learning delimiters, `check`) read the clock at this one instant, so a
# template that writes the date gets one verdict whenever and wherever it runs. Renders for users do not.
PROBE_INSTANT = datetime(2025, 6, 15, 12, 0, 0)


@dataclass
class ClockReading:
    """What a `probe_clock()` scope saw: `read` turns True once a template calls `strftime_now` in it."""

    instant: datetime
    read: bool = False


_probe_clock: ContextVar[ClockReading | None] = ContextVar("templatekit_probe_clock", default=None)


@contextmanager
def probe_clock() -> Iterator[ClockReading]:
    """Within this scope (this thread or task only), `strftime_now` answers for `PROBE_INSTANT`.

    Nested scopes share the outer one's `ClockReading`. Renders outside any scope read the real clock.

    Example:
        >>> template = make_environment().from_string("{{ strftime_now('%Y-%m-%d %H:%M') }}")
        >>> with probe_clock() as clock:
        ...     template.render(), clock.read
        ('2025-06-15 12:00', True)
    """
    outer = _probe_clock.get()
    if outer is not None:
        yield outer
        return
    reading = ClockReading(PROBE_INSTANT)
    token = _probe_clock.set(reading)
    try:
        yield reading
    finally:
        _probe_clock.reset(token)


def strftime_now(fmt: str) -> str:
    """transformers' `strftime_now` global: the real clock, or `PROBE_INSTANT` inside `probe_clock()`."""
    reading = _probe_clock.get()
    if reading is None:
        return datetime.now().strftime(fmt)
    reading.read = True
    return reading.instant.strftime(fmt)


def make_environment(generation: type[jinja2.ext.Extension] = GenerationTag) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment with transformers' chat-template settings, whose renders are bounded
    (`templatekit.core.sandbox`: time, memory and call depth, as the limits in force say).

    `generation` is the extension that handles `{% generation %}` blocks (rendered unchanged by default).

    Example:
        >>> make_environment().from_string("{{ x | tojson }}").render(x="<b>")
        '"<b>"'
    """
    environment_class = LimitedEnvironment if enabled() else ImmutableSandboxedEnvironment
    env = environment_class(trim_blocks=True, lstrip_blocks=True, extensions=[generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = jinja2.utils.Namespace
    env.globals["dict"] = dict
    return env


@dataclass(frozen=True)
class RawToken:
    """One lexer token with its place in the source: `source[start:end]` is its text."""

    type: str
    value: str
    start: int
    end: int

    @property
    def tag_end(self) -> int:
        """For a closing tag, the offset just after `}}`/`%}`, before any whitespace the lexer swallowed."""
        if self.type == "variable_end":
            return self.start + self.value.index("}}") + 2
        if self.type == "block_end":
            return self.start + self.value.index("%}") + 2
        return self.end


@dataclass
class ParsedTemplate:
    """A template's source, its raw tokens (with offsets) and its AST (with `Pos` line numbers)."""

    source: str
    tokens: list[RawToken]
    ast: nodes.Template

    def token_index_at(self, offset: int) -> int:
        """Index of the token that starts at `offset`."""
        return self._starts[offset]

    def __post_init__(self) -> None:
        self._starts = {token.start: index for index, token in enumerate(self.tokens)}


def _lex(env: ImmutableSandboxedEnvironment, source: str, name: str | None) -> list[RawToken]:
    tokens: list[RawToken] = []
    cursor = 0
    try:
        for _lineno, kind, value in env.lexer.tokeniter(source, name):
            start = source.find(value, cursor)
            # Stripped whitespace (lstrip_blocks, `-` markers) is the only text the lexer skips.
            if start < 0 or source[cursor:start].strip():
                line, column = line_column(source, cursor)
                raise TemplateSourceError(f"cannot locate token {value!r}", source=name, line=line, column=column)
            tokens.append(RawToken(kind, value, start, start + len(value)))
            cursor = start + len(value)
    except jinja2.TemplateSyntaxError as error:
        line, column = line_column(source, cursor)
        if error.lineno and error.lineno != line:
            line, column = error.lineno, 1
        raise TemplateSourceError(error.message or str(error), source=name, line=line, column=column) from None
    return tokens


def lf_line_ends(source: str) -> str:
    """`source` with CRLF (and lone CR) line ends read as LF, as jinja2 itself reads a template: every render
    writes `\\n`, so the patcher works on what jinja2 sees.

    Example:
        >>> lf_line_ends("a\\r\\nb\\rc")
        'a\\nb\\nc'
    """
    return source.replace("\r\n", "\n").replace("\r", "\n") if "\r" in source else source


def restore_line_ends(patched: str, original: str) -> str:
    """`patched` (made from `lf_line_ends(original)`) with the original's CRLF line ends where it had only those.

    Example:
        >>> restore_line_ends("a\\n{% x %}b\\n", "a\\r\\nb\\r\\n")
        'a\\r\\n{% x %}b\\r\\n'
    """
    if "\r\n" in original and original.count("\r\n") == original.count("\n") == original.count("\r"):
        return patched.replace("\n", "\r\n")
    return patched


def parse_template(source: str, name: str | None = None) -> ParsedTemplate:
    """Parse `source` with transformers' settings, keeping offsets.

    Raises `TemplateSourceError` naming line and column for malformed Jinja or an empty template.

    Example:
        >>> parsed = parse_template("{{ a }}{% if b %}x{% endif %}")
        >>> parsed.ast.body[1].lineno.offset  # the `if` keyword
        10
    """
    if not isinstance(source, str):
        raise TemplateSourceError(f"a template must be text, not {type(source).__name__}", source=name)
    if not source.strip():
        raise TemplateSourceError("the template is empty", source=name, line=1, column=1)
    check_source_size(source)  # its tokens and AST alone can take hundreds of bytes a character
    parsed = _parse(_parsing_environment(), source, name)
    compile_cost(parsed.ast)  # what the work on a template this size takes, charged before it starts
    return parsed


_PARSER_ENVIRONMENT: list[ImmutableSandboxedEnvironment] = []


def _parsing_environment() -> ImmutableSandboxedEnvironment:
    """One environment for parsing (the lexer and parser read only its settings and extensions)."""
    if not _PARSER_ENVIRONMENT:
        _PARSER_ENVIRONMENT.append(make_environment())
    return _PARSER_ENVIRONMENT[0]


def _parse(env: jinja2.Environment, source: str, name: str | None) -> ParsedTemplate:
    tokens = _lex(env, source, name)
    parser = Parser(env, source, name)
    parser.stream = TokenStream(env.lexer.wrap(_positioned(source, tokens), name), name, None)
    try:
        ast = parser.parse()
    except jinja2.TemplateSyntaxError as error:
        current = parser.stream.current
        offset = getattr(current.lineno, "offset", None)
        if offset is not None and current.type != "eof":
            line, column = line_column(source, offset)
        else:
            line, column = line_column(source, len(source))
        raise TemplateSourceError(error.message or str(error), source=name, line=line, column=column) from None
    return ParsedTemplate(source, tokens, ast)


def _positioned(source: str, tokens: list[RawToken]) -> Iterator[tuple[Pos, str, str]]:
    """The tokens as the parser reads them, each line number a `Pos` (counted once over the source)."""
    line, cursor = 1, 0
    for token in tokens:
        line += source.count("\n", cursor, token.start)
        cursor = token.start
        yield Pos(line, token.start), token.type, token.value


def node_start(node: nodes.Node) -> int | None:
    """Smallest source offset recorded anywhere in `node`'s subtree (None if none is known)."""
    offsets = [n.lineno.offset for n in _walk(node) if isinstance(getattr(n, "lineno", None), Pos)]
    return min(offsets) if offsets else None


def _walk(node: nodes.Node):
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)
