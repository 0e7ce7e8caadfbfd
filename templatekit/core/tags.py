"""The generation tag, the one place its syntax is defined: `{% generation %}` … `{% endgeneration %}`.

transformers' `AssistantTracker` records the characters a generation block renders, and TRL reads them as the
assistant mask. TRL detects a tagged template with `TRL_TAG`; a `{%+ generation %}` form is invisible to it
(docs/design.md, invariant 4), so the patcher writes only `{% generation %}` with optional `-` markers. Reading, the
package accepts every form (`TAG`), so a template tagged in a form TRL cannot see is still found and replaced.

The jinja2 extension `GenerationTag` parses the block. Rendered plainly it writes its body unchanged, like
transformers' tracker; `MarkedGenerationTag` writes marks around the body instead, so that one scan of the output
finds every block's span (`training.tagged_render`). The marks are strings of private-use characters drawn at
random once per process: a template or a conversation may write any character, `\ue000` included, and no mark
can be forged without reading one, which a template can only do by capturing a block's output (a macro, a
`set` or `filter` block, a `call` or recursive loop's body). A block there raises `MarkerCollision` instead
(`guard_captured_blocks`), and the caller renders with transformers' own tracker.
"""

from __future__ import annotations

import random
import re
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser

from ..errors import MarkerCollision, TemplateLimitError
from .sandbox import check_source_size

__all__ = [
    "CLOSE_MARK",
    "END_TAG",
    "GENERATION",
    "OPEN_MARK",
    "START_TAG",
    "TAG",
    "TAG_OPENING",
    "TRL_TAG",
    "GenerationTag",
    "MarkedGenerationTag",
    "end_tag",
    "first_start_tag",
    "guard_captured_blocks",
    "has_generation_tags",
    "mentions_generation_tag",
    "start_tag",
    "strip_generation_tags",
    "tag_matches",
]

GENERATION = "generation"
START_TAG = "{% generation %}"
END_TAG = "{% endgeneration %}"

#: A whole generation tag, opening or closing, with any whitespace marker (`-`, `+`).
TAG = re.compile(r"\{%[-+]?\s*(end)?generation\s*[-+]?%\}")
#: Where a generation tag begins, complete or not: a template that names one counts as tagged.
TAG_OPENING = re.compile(r"\{%[-+]?\s*(?:end)?generation\b")
#: Where an opening tag begins: what a finding about a template's tags points at.
_START_OPENING = re.compile(r"\{%[-+]?\s*generation\b")
#: The regex TRL 1.16 detects a tagged template with (the forms the patcher writes).
TRL_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Lexing only (never rendering): where block tags begin, with the delimiters transformers' environment uses.
_LEXING_ENVIRONMENT = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)


def _random_mark(draw: random.Random) -> str:
    return "".join(chr(draw.randrange(0xE100, 0xF900)) for _ in range(12))  # 12 of 6,144 private-use characters


# Written around each block's text by `MarkedGenerationTag`: drawn once per process, so that nothing a template
# or a conversation holds can be taken for one (a template that writes U+E000 keeps it, as transformers does).
_DRAW = random.SystemRandom()
OPEN_MARK, CLOSE_MARK = _random_mark(_DRAW), _random_mark(_DRAW)


def start_tag(marker: str = "") -> str:
    """An opening tag; `marker` "-" strips the whitespace before it.

    Example:
        >>> start_tag(), start_tag("-")
        ('{% generation %}', '{%- generation %}')
    """
    return "{%" + marker + " generation %}"


def end_tag(marker: str = "") -> str:
    """A closing tag; `marker` "-" strips the whitespace after it.

    Example:
        >>> end_tag(), end_tag("-")
        ('{% endgeneration %}', '{% endgeneration -%}')
    """
    return "{% endgeneration " + marker + "%}"


def _lexed(source: str) -> list[tuple[str, str, int]] | None:
    """The lexer's tokens as `(kind, value, start)`, with transformers' whitespace settings; None when the text does
    not lex, or not as itself (CRLF line ends, which jinja2 reads as LF), and None unlexed for a template too large
    to parse (its tokens take as much memory as its parse, which then refuses it, named and within its limits)."""
    try:
        check_source_size(source)
    except TemplateLimitError:
        return None
    tokens, cursor = [], 0
    try:
        for _lineno, kind, value in _LEXING_ENVIRONMENT.lexer.tokeniter(source, None):
            start = source.find(value, cursor)
            if start < 0:
                return None
            tokens.append((kind, value, start))
            cursor = start + len(value)
    except jinja2.TemplateSyntaxError:
        return None
    return tokens


def _block_starts(source: str) -> set[int] | None:
    """Offsets where a block tag (`{%`) begins in the template's own code, not in a comment, a raw block or a
    string; None when the text does not lex (then every match counts, and parsing reports the error)."""
    tokens = _lexed(source)
    return None if tokens is None else {start for kind, _, start in tokens if kind == "block_begin"}


def _rendered_between(source: str, tokens: list[tuple[str, str, int]], start: int, end: int) -> str:
    """The text that `source[start:end]` renders as literal text, once the lexer has stripped what the whitespace
    settings and `-` markers strip (each data token keeps a contiguous part of its source)."""
    out = []
    for kind, value, at in tokens:
        if kind != "data" or at >= end or at + len(value) <= start:
            continue
        kept = source.find(value, at)
        out.append(source[max(kept, start) : min(kept + len(value), end)])
    return "".join(out)


def tag_matches(source: str, pattern: re.Pattern = TAG) -> list[re.Match]:
    """The generation tags of `source` matched by `pattern`, leaving out text that only looks like one: a tag
    written inside a `{# comment #}`, a `{% raw %}` block or a string is not a tag.

    Example:
        >>> [m.group() for m in tag_matches("{# {% generation %} #}{%- generation %}x{% endgeneration %}")]
        ['{%- generation %}', '{% endgeneration %}']
    """
    found = list(pattern.finditer(source))
    if not found:
        return found
    starts = _block_starts(source)
    return found if starts is None else [match for match in found if match.start() in starts]


def has_generation_tags(source: str) -> bool:
    """True when the text carries a generation tag in any form.

    Example:
        >>> has_generation_tags("{%- generation -%}x{% endgeneration %}"), has_generation_tags("{# {% generation %} #}")
        (True, False)
    """
    return bool(tag_matches(source))


def mentions_generation_tag(source: str) -> bool:
    """True when a generation tag begins anywhere in the template's code, even one jinja2 cannot parse.

    Example:
        >>> mentions_generation_tag("{%+ generation %}x{%+ endgeneration %}"), mentions_generation_tag("{{ x }}")
        (True, False)
    """
    return bool(tag_matches(source, TAG_OPENING))


def first_start_tag(source: str) -> int | None:
    """The offset of the first opening generation tag (None when there is none).

    Example:
        >>> first_start_tag("ab{% generation %}c{% endgeneration %}")
        2
    """
    found = tag_matches(source, _START_OPENING)
    return found[0].start() if found else None


# What, standing right before a position, strips the whitespace after it: a block tag or comment (trim_blocks
# eats one newline), or any tag with a `-` marker (all whitespace).
_EATS_NEWLINE_BEFORE = re.compile(r"(?:(?<![-+])%\}|(?<![-+])#\}|-%\}|-\}\}|-#\})$")
_STRIPS_ALL_BEFORE = re.compile(r"(?:-%\}|-\}\}|-#\})$")
# What, standing right after a position, strips the whitespace before it.
_STRIPS_ALL_AFTER = re.compile(r"\{[%{#]-")
_STRIPPED_BY_NEXT = re.compile(r"\s*\{[%{#]-")
_BLOCK_TAG_AFTER = re.compile(r"[ \t]*\{[%#](?![+-])")


def strip_generation_tags(source: str) -> str:
    """The template without its generation tags and the whitespace only they removed, so that it renders as
    the tagged one does (callers that must be sure verify it: `strip_template`).

    - a plain tag (`{% generation %}`) eats the newline right after it (trim_blocks): that newline goes with
      the tag unless something else would eat it as well (a block tag or comment before the tag, a `-}}`/`-%}`
      before it, or a `{%-`/`{{-`/`{#-` after the blank text);
    - a `-%}` marker strips the whitespace after it, a `{%-` marker the whitespace before it: that whitespace
      goes unless the neighbour on the other side strips it too;
    - indentation before a plain tag at the start of its line (lstrip_blocks) goes unless a block tag follows.

    A tag inside a comment is not a tag and stays. Where tags were only inserted (as `patch_template` does),
    the result is the untagged original byte for byte.

    Example:
        >>> strip_generation_tags("a{% generation %}b{%- endgeneration %}c")
        'abc'
        >>> strip_generation_tags("{{ m.role }}{% generation %}\\n\\n{{ m.content }}{% endgeneration %}")
        '{{ m.role }}\\n{{ m.content }}'
        >>> strip_generation_tags("{{- x }}  {%- generation -%}  {{ y }}")
        '{{- x }}{{ y }}'
    """
    text, removed = source, 0
    for found in tag_matches(source):
        start, end = found.start() - removed, found.end() - removed
        stripped = _without_tag(text, start, end, found.group(0))
        removed += len(text) - len(stripped)
        text = stripped
    return text


def _without_tag(text: str, start: int, end: int, tag: str) -> str:
    """`text` without the tag at `[start, end)`, and the whitespace only it removed (see above); where that still
    changes what the blank text around it renders (a `{%-` after it now strips a newline the tag kept), the blank
    text is written as the one string it rendered."""
    before, after = text[:start], text[end:]
    # The right side: whitespace the tag stripped after it.
    if tag.endswith("-%}"):
        blank = len(after) - len(after.lstrip())
        if blank and not (_STRIPS_ALL_BEFORE.search(before) or _STRIPS_ALL_AFTER.match(after, blank)):
            after = after[blank:]
    elif not tag.endswith("+%}") and after.startswith("\n"):
        if not (_EATS_NEWLINE_BEFORE.search(before) or _STRIPPED_BY_NEXT.match(after)):
            after = after[1:]
    # The left side: whitespace the tag stripped before it.
    if tag.startswith("{%-"):
        blank = len(before) - len(before.rstrip())
        if blank and not (_STRIPS_ALL_BEFORE.search(before[: len(before) - blank]) or _STRIPS_ALL_AFTER.match(after)):
            before = before[: len(before) - blank]
    elif not tag.startswith("{%+"):
        line_start = before.rfind("\n") + 1
        indent = before[line_start:]
        if indent and not indent.strip(" \t") and not _BLOCK_TAG_AFTER.match(after):
            before = before[:line_start]
    stripped = before + after
    tokens, stripped_tokens = _lexed(text), _lexed(stripped)
    if tokens is None or stripped_tokens is None:
        return stripped
    blank_start = len(text[:start].rstrip())
    blank_end = len(text) - len(text[end:].lstrip())
    rendered = _rendered_between(text, tokens, blank_start, blank_end)
    shrunk = len(text) - len(stripped)
    if _rendered_between(stripped, stripped_tokens, blank_start, blank_end - shrunk) == rendered:
        return stripped
    literal = rendered.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return text[:blank_start] + ('{{ "' + literal + '" }}' if rendered else "") + text[blank_end:]


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged, like transformers' tracker."""

    tags = {GENERATION}

    def parse(self, parser: Parser) -> nodes.Node | list[nodes.Node]:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return self._block(body, lineno)

    def _block(self, body: list[nodes.Node], lineno: int) -> nodes.Node | list[nodes.Node]:
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


class MarkedGenerationTag(GenerationTag):
    """The generation tag writing `OPEN_MARK` and `CLOSE_MARK` around each block's text.

    Example:
        >>> env = jinja2.Environment(extensions=[MarkedGenerationTag])
        >>> env.from_string("a{% generation %}b{% endgeneration %}c").render() == "a" + OPEN_MARK + "b" + CLOSE_MARK + "c"
        True
    """

    def _block(self, body: list[nodes.Node], lineno: int) -> nodes.Node | list[nodes.Node]:
        if _sets_a_variable(body):
            # A variable set inside the block must vanish with it, as in transformers' call block.
            return super()._block(body, lineno)
        # Otherwise the marks are plain text around the body: no call per block.
        return [
            nodes.Output([nodes.TemplateData(OPEN_MARK)]).set_lineno(lineno),
            *body,
            nodes.Output([nodes.TemplateData(CLOSE_MARK)]).set_lineno(lineno),
        ]

    def _render_body(self, caller: Any) -> str:
        return OPEN_MARK + caller() + CLOSE_MARK

    def _captured(self, caller: Any = None) -> str:
        raise MarkerCollision("a generation block renders inside a macro, a set, filter or call block or a loop(...)")


#: What renders a body into a value the template can read (and slice, compare, write twice) before it is output.
_CAPTURING = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block)


def guard_captured_blocks(ast: nodes.Template, extension: MarkedGenerationTag) -> nodes.Template:
    """Make every generation block whose output the template could capture raise `MarkerCollision` when it
    renders, in place of its marks: a template that read a mark could write it around any text.

    Example:
        >>> env = jinja2.Environment(extensions=[MarkedGenerationTag])
        >>> ast = env.parse("{% macro m() %}{% generation %}x{% endgeneration %}{% endmacro %}{{ m() }}")
        >>> env.from_string(guard_captured_blocks(ast, env.extensions[MarkedGenerationTag.identifier])).render()
        Traceback (most recent call last):
        ...
        templatekit.errors.MarkerCollision: a generation block renders inside a macro, a set, filter or call block or a loop(...)
    """
    stack: list[tuple[nodes.Node, bool]] = [(ast, False)]
    while stack:
        node, captured = stack.pop()
        if captured and isinstance(node, nodes.Output) and len(node.nodes) == 1:
            data = node.nodes[0]
            if isinstance(data, nodes.TemplateData) and data.data in (OPEN_MARK, CLOSE_MARK):
                node.nodes = [extension.call_method("_captured")] if data.data == OPEN_MARK else []
                continue
        if captured and isinstance(node, nodes.ExtensionAttribute) and node.name == "_render_body":
            node.name = "_captured"
        inside = captured or isinstance(node, _CAPTURING) or (isinstance(node, nodes.For) and node.recursive)
        if isinstance(node, nodes.CallBlock):  # the call itself is where the block stands; its body is captured
            stack.append((node.call, captured))
            stack.extend((child, inside) for child in node.body)
        else:
            stack.extend((child, inside) for child in node.iter_child_nodes())
    return ast


def _sets_a_variable(body: list[nodes.Node]) -> bool:
    """True when `body` sets a variable in its own scope (loops and macros have scopes of their own)."""
    for node in body:
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            return True
        if isinstance(node, nodes.If) and _sets_a_variable(node.body + node.else_ + [*node.elif_]):
            return True
    return False
