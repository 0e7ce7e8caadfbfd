"""The fast tagged renderer equals transformers' renderer, text and spans, on every patched corpus template."""

from __future__ import annotations

import copy

import pytest
from _corpus import IDS, TEMPLATES, patched
from datasets import Dataset

import templatekit
from templatekit.core.chat_render import render_chat
from templatekit.core.probes import build_probes
from templatekit.core.syntax import probe_clock
from templatekit.core.verify import merge_adjacent, render_probe
from templatekit.errors import MarkerCollision
from templatekit.training.spans import _render as render_tags
from templatekit.training.tagged_render import render_tagged


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_same_text_and_spans_as_transformers(corpus, path):
    try:
        tagged = corpus.patch(path).template  # patch_template(text, retag=True)
    except templatekit.PatchError as error:
        assert error.reasons  # refused with a reason; the corpus report lists it
        return
    compared = 0
    for probe in build_probes() + build_probes(blocks=True):
        reference = render_probe(tagged, probe, spans=True)
        if reference.error is not None:
            with pytest.raises(Exception):
                render_tagged(tagged, probe.messages, **probe.render_kwargs())
            continue
        with probe_clock():  # the clock render_probe reads, for templates that write the date
            text, spans = render_tagged(tagged, probe.messages, **probe.render_kwargs())
        assert text == reference.text, probe.name
        assert merge_adjacent(spans) == merge_adjacent(reference.spans), probe.name
        compared += 1
    assert compared


# A template that writes the private-use characters U+E000 / U+E001 (the marks of templatekit before 0.2) itself,
# around the user's text: transformers keeps them, and trains only the assistant's reply.
WRITES_MARK_CHARACTERS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{{ m.content }}<|im_end|>{% else %}\ue000{{ m.content }}\ue001<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "secret user text \ue001 with \ue000 marks"},
    {"role": "assistant", "content": "Four \ue000 and \ue001."},
]


def _transformers(template: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    texts, spans = render_chat([messages], chat_template=template, return_assistant_tokens_mask=True)
    return texts[0], merge_adjacent([tuple(span) for span in spans[0]])


def test_marker_characters_in_the_template_or_the_conversation_are_text_as_transformers_renders_them():
    tagged = templatekit.patch_template(WRITES_MARK_CHARACTERS).template
    assert templatekit.check_template(tagged).ok  # the tags are right: transformers' tracker agrees
    text, spans = render_tagged(tagged, CONVERSATION)
    assert (text, merge_adjacent(spans)) == _transformers(tagged, CONVERSATION)
    assert "\ue000secret user text" in text
    assert [text[s:e] for s, e in spans] == ["Four \ue000 and \ue001.<|im_end|>"]
    text, spans = templatekit.render_with_spans(WRITES_MARK_CHARACTERS, CONVERSATION)
    assert [text[s:e] for s, e in spans] == ["Four \ue000 and \ue001.<|im_end|>"]


def test_prepare_dataset_keeps_marker_characters_and_trains_only_the_reply(qwen_tokenizer):
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = WRITES_MARK_CHARACTERS
    row = templatekit.prepare_dataset(Dataset.from_dict({"messages": [CONVERSATION]}), tokenizer, progress=False)[0]
    reference = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert row["input_ids"] == reference
    trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    assert trained == "Four \ue000 and \ue001.<|im_end|>"


# Blocks whose output the template can capture and reuse: their marks could be read and written around any text,
# so the fast render falls back to transformers' tracker for them, and gives exactly what transformers gives.
CAPTURED = {
    "macro": "{% macro reply(m) %}{% generation %}{{ m.content }}<|end|>{% endgeneration %}{% endmacro %}"
    "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}{{ reply(m) }}{% else %}"
    "{{ m.content }}<|end|>{% endif %}{% endfor %}",
    "forged_from_caller": "{% macro forge() %}{% set mark = caller() %}{% for m in messages %}"
    "{% if m.role == 'user' %}{{ mark[:12] }}{{ m.content }}{{ mark[-12:] }}{% else %}{{ m.content }}{% endif %}"
    "{% endfor %}{% endmacro %}{% call forge() %}{% generation %}{% endgeneration %}{% endcall %}",
    "set_block": "{% for m in messages %}{% set turn %}{% generation %}{{ m.content }}{% endgeneration %}{% endset %}"
    "<|{{ m.role }}|>{{ turn }}{{ turn | length }}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_a_generation_block_whose_output_the_template_captures_is_rendered_as_transformers_does(name):
    template = CAPTURED[name]
    with pytest.raises(MarkerCollision):
        render_tagged(template, CONVERSATION)
    text, spans = render_tags(template, CONVERSATION, True, None, False, {})  # what SpanRenderer renders with
    assert (text, merge_adjacent(spans)) == _transformers(template, CONVERSATION)
    if name != "set_block":  # there transformers' own offsets are wrong too (DESIGN: tags in the top-level flow)
        assert "secret user text" not in "".join(text[s:e] for s, e in spans)


def test_conversation_is_prepared_like_transformers_prepares_it():
    # gpt-oss reads `thinking`; transformers copies `reasoning_content` there before rendering, and so must we.
    tagged = patched("trl/gptoss.jinja").template
    probe = build_probes()[0]
    probe.messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Four.", "reasoning_content": "Add them."},
    ]
    reference = render_probe(tagged, probe, spans=True)
    with probe_clock():  # gpt-oss writes the date
        text, spans = render_tagged(tagged, probe.messages, **probe.render_kwargs())
    assert "Add them." in text
    assert (text, merge_adjacent(spans)) == (reference.text, merge_adjacent(reference.spans))
