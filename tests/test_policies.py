"""Loss policies and bad conversations, on real corpus templates, through both paths of SpanRenderer; the
policy and limits objects reaching every training entry point."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from _paths import corpus_file
from datasets import Dataset

from templatekit import (
    BatchMasker,
    Limits,
    Policy,
    SpanRenderer,
    audit_conversations,
    prepare_dataset,
    render_with_spans,
)
from templatekit.errors import ConversationError
from templatekit.training.policies import attribute, cut_out

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


@pytest.mark.slow
@pytest.mark.parametrize("fallback", PATHS)
def test_last_response_only_and_eot(fallback):
    assert _trained(LLAMA3, _conversation(), fallback=fallback, last_response_only=True) == ["Two.<|eot_id|>"]
    assert _trained(LLAMA3, _conversation(), fallback=fallback, train_on_eot="none") == ["One.", "Two."]
    assert _trained(LLAMA3, _conversation(), fallback=fallback, train_on_eot="last") == ["One.", "Two.<|eot_id|>"]
    messages = _conversation()
    messages[4]["weight"] = 0  # the last trained turn is now the first reply
    assert _trained(LLAMA3, messages, fallback=fallback, last_response_only=True) == ["One.<|eot_id|>"]


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------ one option, every entry point


@dataclass(frozen=True)
class DigitsPolicy(Policy):
    """A policy option added in one place, as ARCHITECTURE.md says a new one is added to `Policy`: a field, and
    its rule in `apply`. Nothing else in the package knows of it."""

    train_digits: bool = True

    def apply(self, text, turns, weighted, **markers):
        spans = super().apply(text, turns, weighted, **markers)
        if not self.train_digits:
            for digit in "0123456789":
                spans = cut_out(spans, text, digit)
        return spans


NUMBERS = [
    {"role": "user", "content": "How many apples?"},
    {"role": "assistant", "content": "42 apples."},
    {"role": "user", "content": "And pears?"},
    {"role": "assistant", "content": "7 pears."},
]


def _through_every_entry_point(tokenizer, **options) -> dict[str, object]:
    """What each of the five entry points trains of NUMBERS on Qwen2.5's template, given the same options."""
    template = corpus_file(QWEN).read_text()
    text, spans = SpanRenderer(template, **options).render(NUMBERS)
    by_renderer = [text[s:e] for s, e in spans]
    text, spans = render_with_spans(template, NUMBERS, **options)
    by_function = [text[s:e] for s, e in spans]
    data = Dataset.from_dict({"messages": [NUMBERS]})
    row = prepare_dataset(data, tokenizer, template=template, progress=False, **options)[0]
    by_dataset = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    batch = BatchMasker(tokenizer, template, **options)({"messages": [NUMBERS]})
    by_masker = tokenizer.decode([t for t, m in zip(batch["input_ids"][0], batch["assistant_masks"][0]) if m])
    report = audit_conversations(template, [{"messages": NUMBERS}], **options)
    return {
        "SpanRenderer": by_renderer,
        "render_with_spans": by_function,
        "prepare_dataset": by_dataset,
        "BatchMasker": by_masker,
        "audit_conversations": report.trained,
    }


@pytest.mark.parametrize("route", ["object", "keyword"])
def test_a_new_policy_option_reaches_every_entry_point(qwen_tokenizer, route):
    # The option's default trains the digits, as the plain policy does; set, it leaves them untrained wherever
    # the policy is taken: as the object, or as a keyword naming the new field (read off the object's class).
    assert _through_every_entry_point(qwen_tokenizer, policy=DigitsPolicy()) == {
        "SpanRenderer": ["42 apples.<|im_end|>", "7 pears.<|im_end|>"],
        "render_with_spans": ["42 apples.<|im_end|>", "7 pears.<|im_end|>"],
        "prepare_dataset": "42 apples.<|im_end|>7 pears.<|im_end|>",
        "BatchMasker": "42 apples.<|im_end|>7 pears.<|im_end|>",
        "audit_conversations": [len("42 apples.<|im_end|>7 pears.<|im_end|>")],
    }
    options = {"policy": DigitsPolicy(train_digits=False)}
    if route == "keyword":
        options = {"policy": DigitsPolicy(), "train_digits": False}
    assert _through_every_entry_point(qwen_tokenizer, **options) == {
        "SpanRenderer": [" apples.<|im_end|>", " pears.<|im_end|>"],
        "render_with_spans": [" apples.<|im_end|>", " pears.<|im_end|>"],
        "prepare_dataset": " apples.<|im_end|> pears.<|im_end|>",
        "BatchMasker": " apples.<|im_end|> pears.<|im_end|>",
        "audit_conversations": [len(" apples.<|im_end|> pears.<|im_end|>")],
    }


def test_policy_and_limits_objects_equal_their_keywords(qwen_tokenizer):
    as_keywords = dict(train_on_eot="last", max_length=24, truncation="left", timeout=30)
    as_objects = dict(policy=Policy(train_on_eot="last"), limits=Limits(max_length=24, truncation="left", timeout=30))
    template = corpus_file(QWEN).read_text()
    renderer = SpanRenderer(template, **as_objects)
    assert (renderer.policy, renderer.limits) == (SpanRenderer(template, **as_keywords).policy, as_objects["limits"])
    assert render_with_spans(template, NUMBERS, **as_objects) == render_with_spans(template, NUMBERS, **as_keywords)
    data = Dataset.from_dict({"messages": [NUMBERS, NUMBERS[:2]]})
    by_objects = prepare_dataset(data, qwen_tokenizer, template=template, progress=False, **as_objects)
    assert (
        by_objects.to_list()
        == prepare_dataset(data, qwen_tokenizer, template=template, progress=False, **as_keywords).to_list()
    )
    assert all(len(row["input_ids"]) == 24 for row in by_objects)  # the limits reached the cut
    rows = [{"messages": NUMBERS}]
    report = audit_conversations(template, rows, tokenizer=qwen_tokenizer, **as_objects)
    assert report.to_dict() == audit_conversations(template, rows, tokenizer=qwen_tokenizer, **as_keywords).to_dict()
    assert report.rows_truncated == 1
    # A keyword overrides the object's field; a keyword no object has is refused, as Python refuses one.
    assert SpanRenderer(template, policy=Policy(train_on_eot="last"), train_on_eot="none").policy.train_on_eot == "none"
    for entry in (
        lambda: SpanRenderer(template, train_role="judge"),
        lambda: audit_conversations(template, rows, train_role="judge"),
        lambda: prepare_dataset(data, qwen_tokenizer, template=template, train_role="judge"),
    ):
        with pytest.raises(TypeError, match="unexpected keyword argument 'train_role'"):
            entry()
