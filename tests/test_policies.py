"""Loss policies and bad conversations, on real corpus templates, through both paths of SpanRenderer."""

from __future__ import annotations

import pytest
from _paths import corpus_file

from templatekit import SpanRenderer, render_with_spans
from templatekit.errors import ConversationError
from templatekit.training.policies import Policy, attribute

QWEN = "trl/qwen2_5.jinja"
QWEN3 = "trl/qwen3.jinja"
LLAMA3 = "trl/llama3_1.jinja"
PATHS = [None, True]  # tags, forced delimiters


def _conversation():
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Two."},
    ]


def _trained(template_name, messages, **options):
    template = corpus_file(template_name).read_text()
    text, spans = render_with_spans(template, messages, **options)
    return [text[s:e] for s, e in spans]


@pytest.mark.parametrize("fallback", PATHS)
def test_plain_and_weight(fallback):
    assert _trained(QWEN, _conversation(), fallback=fallback) == ["One.<|im_end|>", "Two.<|im_end|>"]
    messages = _conversation()
    messages[2]["weight"] = 0
    assert _trained(QWEN, messages, fallback=fallback) == ["Two.<|im_end|>"]
    messages[4]["weight"] = 0
    assert _trained(QWEN, messages, fallback=fallback) == []


@pytest.mark.parametrize("fallback", PATHS)
def test_last_response_only_and_eot(fallback):
    assert _trained(LLAMA3, _conversation(), fallback=fallback, last_response_only=True) == ["Two.<|eot_id|>"]
    assert _trained(LLAMA3, _conversation(), fallback=fallback, train_on_eot="none") == ["One.", "Two."]
    assert _trained(LLAMA3, _conversation(), fallback=fallback, train_on_eot="last") == ["One.", "Two.<|eot_id|>"]
    messages = _conversation()
    messages[4]["weight"] = 0  # the last trained turn is now the first reply
    assert _trained(LLAMA3, messages, fallback=fallback, last_response_only=True) == ["One.<|eot_id|>"]


@pytest.mark.parametrize("fallback", PATHS)
def test_reasoning_and_mask_out(fallback):
    messages = _conversation()
    messages[4]["reasoning_content"] = "Count up."
    full = _trained(QWEN3, messages, fallback=fallback)
    assert full == ["One.<|im_end|>", "<think>\nCount up.\n</think>\n\nTwo.<|im_end|>"]
    assert _trained(QWEN3, messages, fallback=fallback, train_reasoning=False) == ["One.<|im_end|>", "Two.<|im_end|>"]
    cut = _trained(QWEN3, messages, fallback=fallback, mask_out=("</think>",))
    assert cut == ["One.<|im_end|>", "<think>\nCount up.\n", "\n\nTwo.<|im_end|>"]


def test_renderer_modes_and_template():
    template = corpus_file(QWEN).read_text()
    tags, delimiters = SpanRenderer(template), SpanRenderer(template, fallback=True)
    assert tags.mode == "tags" and "{% generation %}" in tags.template
    assert delimiters.mode == "delimiters" and delimiters.template == template
    messages = _conversation()
    assert tags.render(messages) == delimiters.render(messages)
    text, spans = tags.render(messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and len(spans) == 2


@pytest.mark.parametrize("fallback", PATHS)
def test_bad_conversations(fallback):
    renderer = SpanRenderer(corpus_file(QWEN).read_text(), fallback=fallback)
    with pytest.raises(ConversationError, match="message 1: the user message has no content"):
        renderer.render([{"role": "system", "content": "s"}, {"role": "user"}])
    with pytest.raises(ConversationError, match="message 0: content must be a string or a list of content blocks"):
        renderer.render([{"role": "user", "content": 42}])
    with pytest.raises(ConversationError, match="message 0: a message needs a string 'role'"):
        renderer.render([{"content": "hi"}])
    with pytest.raises(ConversationError, match="weight must be 0 or 1"):
        renderer.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}])
    with pytest.raises(ConversationError, match="a conversation must be a list"):
        renderer.render("hello")
    with pytest.raises(ConversationError, match="has no messages"):
        renderer.render([])


def test_unknown_role_is_named_when_the_template_rejects_it():
    renderer = SpanRenderer(corpus_file("axolotl/exaone4.jinja").read_text())
    with pytest.raises(ConversationError, match="message 1 has role 'narrator'"):
        renderer.render([{"role": "user", "content": "q"}, {"role": "narrator", "content": "n"}], bos_token="<bos>")


def test_dropped_assistant_message_with_a_per_message_policy():
    # Fewer rendered trained turns than trained messages (a message the template drops): a weight could land
    # on the wrong text, so attribution refuses.
    renderer = SpanRenderer(corpus_file(QWEN).read_text())
    messages = _conversation()
    text, spans = renderer.render(messages)
    with pytest.raises(ConversationError, match="rendered 2 trained turn\\(s\\) for 3 message"):
        attribute(spans, messages, [2, 3, 4])
    assert attribute(spans, messages, [2, 4])[1].message == 4


def test_policy_validation():
    with pytest.raises(ValueError, match="train_on_eot"):
        Policy(train_on_eot="turn")
    with pytest.raises(ValueError, match="train_roles"):
        Policy(train_roles=())
    assert Policy(mask_out="</think>").mask_out == ("</think>",)
