"""Writing a macro's body out at its only call (templatekit.inline): the text never changes, and only macros
whose body means the same at the call site are offered."""

from __future__ import annotations

import itertools

import pytest

from templatekit.core.chat_render import render_chat
from templatekit.core.inline import inlined_sources
from templatekit.core.syntax import make_environment, parse_template

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
]


def render(source: str) -> str:
    return make_environment().from_string(source).render(messages=MESSAGES, add_generation_prompt=True)


def test_generation_tags_inside_a_macro_are_measured_from_the_call():
    # The fact inlining exists for: transformers' tracker measures a block against the text yielded at the top
    # level, so inside a macro it starts where the call began (here 0, not 2).
    source = "{% macro turn() %}AB{% generation %}C{% endgeneration %}{% endmacro %}{{ turn() }}"
    texts, spans = render_chat(
        conversations=[[{"role": "user", "content": "x"}]], chat_template=source, return_assistant_tokens_mask=True
    )
    assert texts[0] == "ABC" and spans[0] == [(0, 1)]
    inlined = inlined_sources(parse_template(source.replace("{% generation %}", "").replace("{% endgeneration %}", "")))
    tagged = inlined[0].source.replace("C", "{% generation %}C{% endgeneration %}")
    texts, spans = render_chat(
        conversations=[[{"role": "user", "content": "x"}]], chat_template=tagged, return_assistant_tokens_mask=True
    )
    assert texts[0] == "ABC" and spans[0] == [(2, 3)]


@pytest.mark.parametrize(
    "call_open, call_close, def_close, end_open",
    list(itertools.product(["{{", "{{-"], ["}}", "-}}"], ["%}", "-%}"], ["{%", "{%-"])),
)
def test_the_text_is_the_same_whatever_the_whitespace_control(call_open, call_close, def_close, end_open):
    source = (
        (
            f"{{% macro render(message, prefix='<', suffix='>') {def_close}\n"
            "    {{{ prefix }}}{{{ message.role }}}:\n"
            "    {%- if message.content %} {{{ message.content }}}{% endif %}\n"
            f"  {{{{ suffix }}}}\n  {end_open} endmacro %}}\n"
            "{% for message in messages %}\n"
            f"    {call_open} render(message, suffix='>\\n') {call_close}\n"
            "{% endfor %}\n"
            "{% if add_generation_prompt %}<assistant>:{% endif %}"
        )
        .replace("{{{", "{{")
        .replace("}}}", "}}")
    )
    rewrites = inlined_sources(parse_template(source))
    assert len(rewrites) == 1 and rewrites[0].name == "render"
    assert "with message = message, prefix = '<', suffix = '>\\n'" in rewrites[0].source
    assert render(rewrites[0].source) == render(source)


@pytest.mark.parametrize(
    "source",
    [
        # used twice
        "{% macro t(m) %}{{ m.content }}{% endmacro %}{% for m in messages %}{{ t(m) }}{{ t(m) }}{% endfor %}",
        # used inside an expression or through a filter: its text is not written where the call stands
        "{% macro t(m) %}{{ m.content }}{% endmacro %}{% for m in messages %}{{ t(m) | trim }}{% endfor %}",
        "{% macro t(m) %}{{ m.content }}{% endmacro %}{% for m in messages %}{{ '[' + t(m) }}{% endfor %}",
        # reads `message`, which at the call site is the loop's variable and in the macro is not
        "{% macro t() %}{{ message }}{% endmacro %}{% for message in messages %}{{ t() }}{% endfor %}",
        # `loop` of the call site
        "{% macro t(m) %}{{ loop.index }}{% endmacro %}{% for m in messages %}{{ t(m) }}{% endfor %}",
        # `caller`, and a call inside another macro
        "{% macro t(m) %}{{ caller() }}{% endmacro %}{% for m in messages %}{% call t(m) %}x{% endcall %}{% endfor %}",
        "{% macro t(m) %}{{ m }}{% endmacro %}{% macro u(m) %}{{ t(m) }}{% endmacro %}{{ u(messages) }}{{ u(1) }}",
        # a parameter left without a value
        "{% macro t(m, n) %}{{ m }}{% endmacro %}{% for m in messages %}{{ t(m) }}{% endfor %}",
    ],
)
def test_macros_whose_body_would_mean_something_else_are_not_offered(source):
    assert inlined_sources(parse_template(source)) == []


def test_a_loop_inside_the_macro_keeps_its_own_loop_variable():
    source = (
        "{% macro t(m) %}{% for c in m.content %}{{ loop.index }}{{ c }}{% endfor %}{% endmacro %}"
        "{% for message in messages %}{{ t(message) }}|{% endfor %}"
    )
    rewrites = inlined_sources(parse_template(source))
    assert [rewrite.name for rewrite in rewrites] == ["t"]
    assert render(rewrites[0].source) == render(source) == "1B2e3 4b5r6i7e8f9.|1H2i|1H2e3l4l5o|1B2y3e|"
