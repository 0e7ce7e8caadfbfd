"""Render a tagged template and read its generation spans in one pass, for datasets of many conversations.

transformers' renderer (`render_jinja_template`, what TRL calls) tracks a generation block's offsets by
joining everything streamed so far at each block, and prepares each call afresh. Here the template is
compiled once, each `{% generation %}` block writes two marks around its text (strings drawn at random per
process, `core.tags`: no template or conversation can hold one), and one scan removes them and notes where
they stood. A block whose output the template could capture raises `MarkerCollision`, as does a conversation
that holds a mark: the caller renders those with transformers' own tracker. The conversation is prepared as transformers prepares it
(plain data only, reasoning under each of its names), and the environment has transformers' settings, so
text and spans are the same as transformers'; tests check that on the corpus.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2

from ..core.sandbox import attach_source, charge_compiled, on_switch
from ..core.syntax import make_environment
from ..core.tags import CLOSE_MARK, OPEN_MARK, MarkedGenerationTag, guard_captured_blocks
from ..errors import MarkerCollision

try:  # What transformers does to a conversation before rendering it: plain data only, reasoning under all its names.
    from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
except ImportError:  # releases that do neither

    def _plain_template_data(value):
        return value

    def _alias_reasoning_fields(chat):
        return chat


__all__ = ["MarkerCollision", "render_tagged"]


def _plain(value: Any) -> Any:
    """transformers' `_plain_template_data`, with a fast path for the exact JSON types a dataset row is made of,
    that also refuses a string holding a generation mark (raises `MarkerCollision`).

    Example:
        >>> _plain({"role": "user", "content": ["hi", 1, None]})
        {'role': 'user', 'content': ['hi', 1, None]}
    """
    kind = type(value)
    if kind is str:
        if OPEN_MARK in value or CLOSE_MARK in value:
            raise MarkerCollision("the conversation holds a generation mark itself")
        return value
    if kind is dict:
        return {_plain(key): _plain(item) for key, item in value.items()}
    if kind is list:
        return [_plain(item) for item in value]
    if value is None or kind in (int, float, bool):
        return value
    plain = _plain_template_data(value)  # anything else, as transformers makes it plain
    if not isinstance(plain, (dict, list, tuple, str)):
        return plain
    if isinstance(plain, str):
        return _plain(plain)
    _holds_marker(plain)
    return plain


def _holds_marker(value: Any) -> None:
    # One C-speed pass over a converted value; `default=str` covers what JSON cannot hold.
    text = json.dumps(value, ensure_ascii=False, default=str)
    if OPEN_MARK in text or CLOSE_MARK in text:
        raise MarkerCollision("the conversation holds a generation mark itself")


@lru_cache(maxsize=64)
def _compiled(template: str) -> jinja2.Template:
    environment = make_environment(MarkedGenerationTag)  # bounded: see templatekit.core.sandbox
    extension = environment.extensions[MarkedGenerationTag.identifier]
    compiled = environment.from_string(guard_captured_blocks(environment.parse(template), extension))
    return attach_source(compiled, template)  # a limit reached in it names its line and column


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

    Raises `MarkerCollision` when a block renders where the template could capture its output, or the
    conversation holds a mark (the caller falls back to transformers' renderer for that conversation).

    Example:
        >>> tagged = "{% for m in messages %}{{ m.role }}: {% generation %}{{ m.content }}{% endgeneration %}.{% endfor %}"
        >>> render_tagged(tagged, [{"role": "assistant", "content": "Hi"}])
        ('assistant: Hi.', [(11, 13)])
    """
    messages, tools, documents, variables = _plain([messages, tools, documents, variables])
    raw = charge_compiled(_compiled(template)).render(
        messages=_alias_reasoning_fields(messages),
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        **variables,
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
