"""Source positions: line numbers that also know their character offset, and a parse that hands them to jinja2.

jinja2 nodes carry line numbers only. Here each token's line number is a `Pos`, an `int` (what jinja2 expects)
that also carries the token's offset in the source, so every node the parser builds from a token remembers
where it came from. `syntax` parses templates this way (edits become insertions into the untouched source),
and the sandbox does too, so that a limit reached at run time can name its column.
"""

from __future__ import annotations

from collections.abc import Iterator

import jinja2
from jinja2 import nodes
from jinja2.lexer import TokenStream
from jinja2.parser import Parser

from ..errors import TemplateSourceError

__all__ = ["Pos", "line_column", "parse_with_offsets"]


class Pos(int):
    """A line number (the int value, as jinja2 expects) that also knows its source offset."""

    offset: int

    def __new__(cls, lineno: int, offset: int) -> Pos:
        pos = super().__new__(cls, lineno)
        pos.offset = offset
        return pos

    def __getnewargs__(self) -> tuple[int, int]:  # keeps the offset through copy.deepcopy
        return (int(self), self.offset)


def line_column(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset.

    Example:
        >>> line_column("ab\\ncd", 4)
        (2, 2)
    """
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


def parse_with_offsets(env: jinja2.Environment, source: str, name: str | None = None) -> nodes.Template:
    """`env`'s AST of `source`, whose line numbers are `Pos` (they know their offsets): what
    `LimitedEnvironment` compiles, so that a limit reached at run time can name its column.

    Raises `TemplateSourceError` for malformed Jinja.

    Example:
        >>> ast = parse_with_offsets(jinja2.Environment(), "ab{{ x }}")
        >>> ast.body[0].nodes[1].lineno.offset  # the name `x`
        5
    """
    parser = Parser(env, source, name)
    parser.stream = TokenStream(env.lexer.wrap(_offset_tokens(env, source, name), name), name, None)
    return parser.parse()


def _offset_tokens(env: jinja2.Environment, source: str, name: str | None) -> Iterator[tuple[Pos, str, str]]:
    """The lexer's tokens, each line number a `Pos`, counted in one pass over the source."""
    cursor, line = 0, 1
    for _lineno, kind, value in env.lexer.tokeniter(source, name):
        start = source.find(value, cursor)
        if start < 0 or (start > cursor and source[cursor:start].strip()):
            raise TemplateSourceError(f"cannot locate token {value!r}", source=name)
        line += source.count("\n", cursor, start)
        yield Pos(line, start), kind, value
        line += value.count("\n")
        cursor = start + len(value)
