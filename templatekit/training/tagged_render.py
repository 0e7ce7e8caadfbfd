"""Render a tagged template and read its generation spans in one pass, for datasets of many conversations.

transformers' renderer (`render_jinja_template`, what TRL calls) tracks a generation block's offsets by
joining everything streamed so far at each block, and prepares each call afresh. Here the template is
compiled once, each `{% generation %}` block writes two private-use marker characters around its text, and
one scan removes them and notes where they stood. The conversation is prepared as transformers prepares it
(plain data only, reasoning under each of its names), and the environment has transformers' settings, so
text and spans are the same as transformers'; tests check that on the corpus.
"""

from __future__ import annotations

import json
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.parser import Parser

from .limits import on_switch
from .syntax import GENERATION_TAG, make_environment

try:  # What transformers does to a conversation before rendering it: plain data only, reasoning under all its names.
    from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
except ImportError:  # releases that do neither

    def _plain_template_data(value):
        return value

    def _alias_reasoning_fields(chat):
        return chat


__all__ = ["MarkerCollision", "render_tagged"]

OPEN, CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no tokenizer or template writes them


class MarkerCollision(ValueError):
    """The conversation itself holds a marker character, so the markers cannot be told apart from it."""


class _MarkedGeneration(jinja2.ext.Extension):
    tags = {GENERATION_TAG}

    def parse(self, parser: Parser) -> nodes.Node | list[nodes.Node]:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        if _sets_a_variable(body):
            # A variable set inside the block must vanish with it, as in transformers' call block.
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)
        # Otherwise the markers are plain text around the body: no call per block.
        return [
            nodes.Output([nodes.TemplateData(OPEN)]).set_lineno(lineno),
            *body,
            nodes.Output([nodes.TemplateData(CLOSE)]).set_lineno(lineno),
        ]

    def _mark(self, caller) -> str:
        return OPEN + caller() + CLOSE


def _sets_a_variable(body: list[nodes.Node]) -> bool:
    """True when `body` sets a variable in its own scope (loops and macros have scopes of their own)."""
    for node in body:
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            return True
        if isinstance(node, nodes.If) and _sets_a_variable(node.body + node.else_ + [*node.elif_]):
            return True
    return False


def _holds_marker(*values) -> bool:
    # One C-speed pass over everything the template can see; `default=str` covers what JSON cannot hold.
    text = json.dumps(values, ensure_ascii=False, default=str)
    return OPEN in text or CLOSE in text


@lru_cache(maxsize=64)
def _compiled(template: str) -> jinja2.Template:
    return make_environment(_MarkedGeneration).from_string(template)  # bounded: see templatekit.limits


on_switch(_compiled.cache_clear)


def render_tagged(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **variables,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its generation blocks (empty ones left out).

    Raises `MarkerCollision` when the conversation itself holds a marker character (the caller falls back to
    transformers' renderer for that conversation).

    Example:
        >>> tagged = "{% for m in messages %}{{ m.role }}: {% generation %}{{ m.content }}{% endgeneration %}.{% endfor %}"
        >>> render_tagged(tagged, [{"role": "assistant", "content": "Hi"}])
        ('assistant: Hi.', [(11, 13)])
    """
    if _holds_marker(messages, tools, documents, variables):
        raise MarkerCollision("the conversation holds a generation marker character itself")
    raw = _compiled(template).render(
        messages=_alias_reasoning_fields(_plain_template_data(messages)),
        tools=_plain_template_data(tools),
        documents=_plain_template_data(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain_template_data(variables),
    )
    if OPEN not in raw:
        return raw, []
    # Blocks do not nest: every piece after an opening marker holds exactly one closing marker.
    head, *blocks = raw.split(OPEN)
    pieces, spans, length = [head], [], len(head)
    for block in blocks:
        inside, closed, after = block.partition(CLOSE)
        if not closed or CLOSE in after:
            raise MarkerCollision("generation markers out of order: a block inside a block")
        if inside:
            spans.append((length, length + len(inside)))
        pieces += (inside, after)
        length += len(inside) + len(after)
    return "".join(pieces), spans
