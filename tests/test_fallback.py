"""The delimiter fallback and the tags path against sentinel truth on every corpus template.

Truth is the verifier's: `patcher.analyse` traces each probe conversation (sentinel contents) and lays out
where every trained turn starts and ends; `verify.check_spans` then demands byte-identical text, every
assistant sentinel trained, no system/user/tool sentinel trained, the header out and the end-of-turn
marker in. Both paths of `SpanRenderer` are held to it, the fallback forced with `fallback=True`.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
from _corpus import IDS, TEMPLATES, Corpus
from _paths import corpus_file

from templatekit import PatchError, SpanRenderer
from templatekit.core.syntax import probe_clock
from templatekit.core.verify import check_spans, merge_adjacent
from templatekit.errors import ConversationError, FallbackError
from templatekit.training.delimiters import Delimiters, find_spans
from templatekit.training.fallback import derive_delimiters

# The corpus templates on which the forced fallback trains exactly what the truth trains, as measured (of 125:
# 115 exact, the others refused). One template lost fails `test_forced_fallback_covers_most_of_the_corpus`; raise
# the floor as the fallback improves.
FALLBACK_FLOOR = 115


def _problems(renderer: SpanRenderer, analysis) -> list[str]:
    problems, checked = [], 0
    for probe in analysis.probes:
        layout = analysis.layouts.get(probe.name)
        if layout is None:
            continue
        try:
            with probe_clock():  # the truth was traced at the probe instant; a template may write the date
                text, spans = renderer.render(probe.messages, **probe.render_kwargs())
        except ConversationError as error:
            problems.append(f"{probe.name}: {error}")
            continue
        if text != layout.text:
            problems.append(f"{probe.name}: text differs from the original rendering")
            continue
        # Whitespace after the stop marker, trained by a template's own tags (TRL's style), is imprecise, not wrong.
        problems += [f"{probe.name}: {p}" for p in check_spans(layout, spans, imprecise=[])]
        checked += 1
    if not checked:
        problems.append("no probe checked")
    return problems


@functools.cache
def _fallback_problems(corpus: Corpus, path) -> list[str] | None:
    """How the forced fallback differs from the truth on `path`'s probes ([] when it matches exactly); None when
    the fallback refuses the template, as it must when nothing tells its turns apart."""
    try:
        renderer = corpus.renderer(path, fallback=True)
    except FallbackError as error:
        assert "even the fallback cannot apply" in str(error)
        return None
    assert renderer.mode == "delimiters"
    analysis = corpus.truth(path)
    if analysis is None:
        return ["the fallback applies where the truth refuses the template (a classifier, no message loop)"]
    return _problems(renderer, analysis)


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_forced_fallback_matches_sentinel_truth_or_refuses(corpus, path):
    # The fallback never trains what the truth does not: it matches it exactly or refuses with reasons.
    assert _fallback_problems(corpus, path) in (None, [])


@pytest.mark.corpus
def test_forced_fallback_covers_most_of_the_corpus(corpus):
    # Counted over the whole corpus here, whatever ran before: a template the fallback no longer matches (or now
    # refuses) takes the count under the measured floor.
    exact = sorted(name for path, name in zip(TEMPLATES, IDS) if _fallback_problems(corpus, path) == [])
    assert len(exact) >= FALLBACK_FLOOR, exact


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_tags_path_matches_sentinel_truth(corpus, path):
    try:
        renderer = corpus.renderer(path, fallback=False)
    except PatchError as error:
        assert error.reasons  # refused with its reason (the corpus report lists it); the fallback covers it
        return
    assert renderer.mode == "tags"
    assert _problems(renderer, corpus.truth(path)) == []


def test_find_spans_explicit_parts_and_generation_prompt():
    d = Delimiters(
        ("<|im_start|>assistant\n",),
        "<|im_end|>",
        ("<|im_start|>user\n",),
        generation_prompt="<|im_start|>assistant\n<think>\n",
    )
    text = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert find_spans(text, d, add_generation_prompt=True) == []
    no_eot = Delimiters(("### Response:\n",), "", ("### Instruction:\n",))
    text = "### Instruction:\nq\n\n### Response:\nan answer\n\n### Instruction:\nmore"
    assert [text[s:e] for s, e in find_spans(text, no_eot)] == ["an answer"]


def test_fallback_refuses_with_reasons():
    # Every role's text is written by one expression with no delimiter at all: nothing separates turns.
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(FallbackError, match="even the fallback cannot apply"):
        derive_delimiters(template)
    with pytest.raises(FallbackError, match="even the fallback cannot apply"):
        SpanRenderer(template, fallback=True)


# Conversations unlike the probes (prose with newlines, three exchanges, a tool round trip, reasoning, an open
# prompt): delimiters learned from sentinel renders must find the same turns in them as the generation tags.
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]
BEYOND_PROBES = {
    "chat": {
        "messages": [
            {"role": "system", "content": "Be brief and kind."},
            {"role": "user", "content": "What is 2+2?\nExplain."},
            {"role": "assistant", "content": "It is 4.\n\nBecause 2 and 2 make 4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "Six, of course!"},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome."},
        ]
    },
    "tools": {
        "messages": [
            {"role": "user", "content": "Find cats"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": {"q": "cats"}}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "Cats are small mammals."},
            {"role": "assistant", "content": "Cats are small mammals."},
            {"role": "user", "content": "ok"},
            {"role": "assistant", "content": "Anything else?"},
        ],
        "tools": _TOOLS,
    },
    "reasoning": {
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "Think one."},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2", "reasoning_content": "Think two."},
        ]
    },
    "open_prompt": {
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        "add_generation_prompt": True,
    },
}


def _trained_texts(text: str, spans) -> list[tuple[int, str]]:
    """Trained text per span, less leading whitespace (the truth lets a turn's first newline go either way)."""
    out = []
    for start, end in merge_adjacent(spans):
        lead = len(text[start:end]) - len(text[start:end].lstrip())
        if text[start + lead : end]:
            out.append((start + lead, text[start + lead : end]))
    return out


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_fallback_trains_what_the_tags_train_beyond_the_probes(corpus, path):
    try:
        tags = corpus.renderer(path, fallback=False)
    except PatchError as error:
        assert error.reasons  # refused with its reason: no tags to compare the fallback with
        return
    try:
        fallback = corpus.renderer(path, fallback=True)
    except FallbackError as error:
        # The tags cover it; delimiters cannot tell its turns (a header-less reply that writes its own role line).
        assert "even the fallback cannot apply" in str(error)
        return
    compared = 0
    for name, conversation in BEYOND_PROBES.items():
        options = {key: value for key, value in conversation.items() if key != "messages"}
        # Plain-string contents, and the same as content blocks for templates that only read blocks.
        for messages in (conversation["messages"], _as_blocks(conversation["messages"])):
            try:
                text, spans = tags.render(messages, bos_token="<s>", eos_token="</s>", **options)
            except ConversationError:
                continue  # the template rejects this conversation (a role or shape it does not support)
            same_text, found = fallback.render(messages, bos_token="<s>", eos_token="</s>", **options)
            assert same_text == text
            assert _stop_trimmed(text, found) == _stop_trimmed(text, spans), name
            compared += 1
            break
    assert compared, "the template rejects every conversation"


def _stop_trimmed(text: str, spans) -> list:
    """The trained texts, less whitespace after their end: a template's own tags may train it (imprecise)."""
    return [(start, piece.rstrip()) for start, piece in _trained_texts(text, spans)]


def _as_blocks(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if m.get("content") else m for m in messages]


def test_joins_keep_a_channel_turn_whole(corpus):
    # Rule 5 on a real channel-format template: the analysis message ends with <|end|> and the same turn
    # reopens with a header the model writes itself; one message is one trained span.
    renderer = corpus.renderer(corpus_file("trl/gptoss.jinja"), fallback=True)
    assert renderer.delimiters.joins
    messages = BEYOND_PROBES["reasoning"]["messages"]
    text, spans = renderer.render(messages)
    trained = [text[s:e] for s, e in spans]
    # The template keeps only the last message's reasoning.
    assert trained[0] == "<|channel|>final<|message|>A1<|end|>"
    assert trained[1] == (
        "<|channel|>analysis<|message|>Think two.<|end|><|start|>assistant<|channel|>final<|message|>A2<|return|>"
    )
    plain = replace(renderer.delimiters, joins=())
    assert len(find_spans(text, plain)) == 3  # without the join, the turn's own second header is left out


@pytest.mark.slow
def test_continuation_and_split_turns_with_policies():
    # Rules 3-4 on a template that writes a tool's result inside the model's turn: the tool call and the
    # reply around it are trained, the result is not; per-span policies apply, per-message ones cannot.
    template = corpus_file("trl/gemma4.jinja").read_text(encoding="utf-8")
    renderer = SpanRenderer(template, fallback=True)
    assert renderer.delimiters.split_turns
    conversation = BEYOND_PROBES["tools"]
    text, spans = renderer.render(conversation["messages"], tools=_TOOLS)
    trained = "".join(text[s:e] for s, e in spans)
    assert "lookup" in trained and "Anything else?" in trained and "Find cats" not in trained
    assert trained.count("Cats are small mammals.") == 1  # the reply, not the tool's result
    no_eot = SpanRenderer(template, fallback=True, train_on_eot="none")
    text, spans = no_eot.render(conversation["messages"], tools=_TOOLS)
    assert spans and not any(text[s:e].endswith("<turn|>") for s, e in spans)
    strict = SpanRenderer(template, fallback=True, last_response_only=True)
    text, spans = strict.render(conversation["messages"], tools=_TOOLS)
    assert [text[s:e] for s, e in spans] == ["Anything else?<turn|>"]
    # A message with both a reply and a tool call renders as two pieces around the result: which piece is
    # whose is then unknown to delimiters, and a per-message policy refuses rather than guess.
    said_and_called = [dict(m) for m in conversation["messages"]]
    said_and_called[1]["content"] = "Let me look."
    text, spans = renderer.render(said_and_called, tools=_TOOLS)
    assert [text[s:e] for s, e in spans][1:3] == ["Let me look.<turn|>", "Cats are small mammals.<turn|>"]
    with pytest.raises(ConversationError, match="several pieces"):
        strict.render(said_and_called, tools=_TOOLS)
    chat = BEYOND_PROBES["chat"]["messages"]
    text, spans = strict.render(chat)
    assert [text[s:e] for s, e in spans] == ["You're welcome.<turn|>"]


def test_find_spans_continuation_after_an_end_marker():
    # A reply written after the previous one's end marker with no header of its own is the same speaker's,
    # unless an opener follows.
    d = Delimiters(("<A>",), "<E>", ("<U>",), continues=True)
    text = "<U>q<E>\n<A>one<E>\ntwo<E>\n<U>next<E>\n<A>three<E>"
    assert [text[s:e] for s, e in find_spans(text, d)] == ["one<E>", "two<E>", "three<E>"]
    assert [text[s:e] for s, e in find_spans(text, replace(d, continues=False))] == ["one<E>", "three<E>"]


@pytest.mark.corpus
def test_custom_speaker_fallback_trains_what_the_tags_train(corpus):
    # A trained speaker of its own (Unsloth's court-argument case), followed by the assistant: a role order no
    # probe shows after a trained turn. The fallback stops the speaker's turn at the assistant's header because
    # it also learns every untrained message's header (rule 3), as the tags do.
    justice = "justice_william_h_rehnquist"
    messages = [
        {"role": "system", "content": "Oral argument."},
        {"role": "user", "content": "May it please the court."},
        {"role": justice, "content": "Proceed, counsel.\nBriefly."},
        {"role": "assistant", "content": "Thank you."},
        {"role": "user", "content": "Our point is simple."},
        {"role": justice, "content": "Is it?"},
    ]
    compared, differing = 0, []
    for path, name in zip(TEMPLATES, IDS):
        template = corpus.text(path)
        try:
            tags = SpanRenderer(template, train_roles=(justice,), fallback=False)
        except PatchError:
            continue  # the core cannot tag this speaker here: nothing to compare with
        try:
            fallback = SpanRenderer(template, train_roles=(justice,), fallback=True)
        except FallbackError:
            continue  # the tags cover this speaker; its delimiters are ambiguous, so the fallback refuses
        try:
            text, spans = tags.render(messages, bos_token="<s>", eos_token="</s>")
        except ConversationError:
            continue  # the template rejects a role it does not know
        if _stop_trimmed(*fallback.render(messages, bos_token="<s>", eos_token="</s>")) != _stop_trimmed(text, spans):
            differing.append(name)
        compared += 1
    # Templates that write an unknown role as another (ChatML variants render it as `system`) are refused for
    # this speaker: nothing tells its turn apart. The rest are compared.
    assert compared >= 29 and differing == []  # 29 compared as measured; a template lost fails
