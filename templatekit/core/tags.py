"""The generation tag, the one place its syntax is defined: `{% generation %}` … `{% endgeneration %}`.

transformers' `AssistantTracker` records the characters a generation block renders, and TRL reads them as the
assistant mask. TRL detects a tagged template with `TRL_TAG`; a `{%+ generation %}` form is invisible to it
(DESIGN.md invariant 4), so the patcher writes only `{% generation %}` with optional `-` markers. Reading, the
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

import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser

from ..errors import MarkerCollision

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


def has_generation_tags(source: str) -> bool:
    """True when the text carries a generation tag in any form.

    Example:
        >>> has_generation_tags("{%- generation -%}x{% endgeneration %}")
        True
    """
    return TAG.search(source) is not None


def mentions_generation_tag(source: str) -> bool:
    """True when a generation tag begins anywhere in the text, even one jinja2 cannot parse.

    Example:
        >>> mentions_generation_tag("{%+ generation %}x{%+ endgeneration %}"), mentions_generation_tag("{{ x }}")
        (True, False)
    """
    return TAG_OPENING.search(source) is not None


def first_start_tag(source: str) -> int | None:
    """The offset of the first opening generation tag (None when there is none).

    Example:
        >>> first_start_tag("ab{% generation %}c{% endgeneration %}")
        2
    """
    found = _START_OPENING.search(source)
    return found.start() if found else None


def strip_generation_tags(source: str) -> str:
    """Remove every `{% generation %}` / `{% endgeneration %}` tag, keeping their whitespace markers' effect.

    A tag with a `-` marker stripped whitespace next to it; an empty `{%- if true -%}`-like stand-in would
    keep that, but a bare removal is what a reader expects, so the caller verifies the result renders alike.

    Example:
        >>> strip_generation_tags("a{% generation %}b{%- endgeneration %}c")
        'abc'
    """
    return TAG.sub("", source)


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
