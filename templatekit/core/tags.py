"""The generation tag, the one place its syntax is defined: `{% generation %}` … `{% endgeneration %}`.

transformers' `AssistantTracker` records the characters a generation block renders, and TRL reads them as the
assistant mask. TRL detects a tagged template with `TRL_TAG`; a `{%+ generation %}` form is invisible to it
(docs/design.md, invariant 4), so the patcher writes only `{% generation %}` with optional `-` markers. Reading, the
package accepts every form (`TAG`), so a template tagged in a form TRL cannot see is still found and replaced.

The jinja2 extension `GenerationTag` parses the block. Rendered plainly it writes its body unchanged, like
transformers' tracker; `MarkedGenerationTag` writes private-use marks around the body instead, so that one scan
of the output finds every block's span (`training.tagged_render`).
"""

from __future__ import annotations

import re
from typing import Any

import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser

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

# Unicode private-use characters, written around each block's text by `MarkedGenerationTag`: no tokenizer or
# template writes them.
OPEN_MARK, CLOSE_MARK = "\ue000", "\ue001"


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


def _sets_a_variable(body: list[nodes.Node]) -> bool:
    """True when `body` sets a variable in its own scope (loops and macros have scopes of their own)."""
    for node in body:
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            return True
        if isinstance(node, nodes.If) and _sets_a_variable(node.body + node.else_ + [*node.elif_]):
            return True
    return False
