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
from typing import Any

import jinja2

from ..core.sandbox import on_switch
from ..core.syntax import make_environment
from ..core.tags import CLOSE_MARK, OPEN_MARK, MarkedGenerationTag
from ..errors import MarkerCollision

try:  # What transformers does to a conversation before rendering it: plain data only, reasoning under all its names.
    from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
except ImportError:  # releases that do neither

    def _plain_template_data(value):
        return value

    def _alias_reasoning_fields(chat):
        return chat


__all__ = ["MarkerCollision", "render_tagged"]


def _holds_marker(*values) -> bool:
    # One C-speed pass over everything the template can see; `default=str` covers what JSON cannot hold.
    text = json.dumps(values, ensure_ascii=False, default=str)
    return OPEN_MARK in text or CLOSE_MARK in text


@lru_cache(maxsize=64)
def _compiled(template: str) -> jinja2.Template:
    return make_environment(MarkedGenerationTag).from_string(template)  # bounded: see templatekit.core.sandbox


on_switch(_compiled.cache_clear)


def render_tagged(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **variables: Any,
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
    if OPEN_MARK not in raw:
        return raw, []
    # Blocks do not nest: every piece after an opening marker holds exactly one closing marker.
    head, *blocks = raw.split(OPEN_MARK)
    pieces, spans, length = [head], [], len(head)
    for block in blocks:
        inside, closed, after = block.partition(CLOSE_MARK)
        if not closed or CLOSE_MARK in after:
            raise MarkerCollision("generation markers out of order: a block inside a block")
        if inside:
            spans.append((length, length + len(inside)))
        pieces += (inside, after)
        length += len(inside) + len(after)
    return "".join(pieces), spans
