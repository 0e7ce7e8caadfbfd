"""Token-level checks on real tokenizers: a patched corpus template, rendered through transformers'
``apply_chat_template(..., return_assistant_tokens_mask=True)``, masks exactly the tokens the model
generates -- each assistant reply (content, tool calls) and the end-of-turn token that closes it --
and nothing of system/user text, role headers or the whitespace after the end-of-turn token.

The expected mask is computed here, independently of templatekit: each trained turn is located in
the rendered text by its (unique) content, the turn's span runs from the end of the role header that
precedes it to the end of the end-of-turn marker that follows it, and a token is expected to be
trained iff one of its characters lies in such a span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from _corpus import patched

import templatekit

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus(name: str) -> str:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"corpus template {name} not found under {CORPUS}")
    return path.read_text(encoding="utf-8")


@dataclass
class Turn:
    """One turn expected to be trained: `anchor` is unique text inside it (its content, or the start
    of its tool call); `header` the text that opens the turn; `eot` the marker that closes it."""

    anchor: str
    header: str
    eot: str


def expected_spans(rendered: str, turns: list[Turn]) -> list[tuple[int, int]]:
    """Character spans of the generated part of each turn, found by plain string search."""
    spans, cursor = [], 0
    for turn in turns:
        at = rendered.index(turn.anchor, cursor)
        header_end = rendered.rindex(turn.header, cursor, at) + len(turn.header)
        eot_start = rendered.index(turn.eot, at + len(turn.anchor))
        assert turn.header not in rendered[header_end:eot_start], "turn boundaries are ambiguous"
        spans.append((header_end, eot_start + len(turn.eot)))
        cursor = eot_start + len(turn.eot)
    return spans


def overlap_mask(offsets, spans) -> list[int]:
    """1 for a token with at least one character inside a span (written out naively on purpose)."""
    return [int(any(max(s, a) < min(e, b) for a, b in spans)) for s, e in offsets]


def describe(tokenizer, ids, offsets, got, expected, rendered) -> str:
    rows = []
    for i, (tid, (s, e), g, x) in enumerate(zip(ids, offsets, got, expected)):
        flag = "   " if g == x else "!!!"
        rows.append(f"{flag} {i:4d} got={g} expected={x} {tokenizer.convert_ids_to_tokens(tid)!r} {rendered[s:e]!r}")
    return "\n".join(rows)


@pytest.fixture
def with_template():
    """Set `tokenizer.chat_template` for one test and put the original back afterwards."""
    saved = []

    def use(tokenizer, template):
        saved.append((tokenizer, tokenizer.chat_template))
        tokenizer.chat_template = template
        return tokenizer

    yield use
    for tokenizer, template in reversed(saved):
        tokenizer.chat_template = template


def check_mask(tokenizer, original, patched, messages, turns, **kwargs):
    """Render with both templates, then compare transformers' assistant mask to the expectation."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=original, **kwargs)
    tokenizer.chat_template = patched
    assert tokenizer.apply_chat_template(messages, tokenize=False, **kwargs) == rendered  # byte-identical
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert list(out["input_ids"]) == enc["input_ids"]
    offsets = enc["offset_mapping"]
    spans = expected_spans(rendered, turns)
    expected = overlap_mask(offsets, spans)
    got = list(out["assistant_masks"])
    assert got == expected, (
        "\n" + rendered + "\n" + describe(tokenizer, enc["input_ids"], offsets, got, expected, rendered)
    )
    trained = [tokenizer.decode([i]) for i, m in zip(enc["input_ids"], got) if m]
    return rendered, enc, got, trained


def assert_outside(rendered, enc, mask, *texts):
    """No token overlapping any occurrence of these texts is trained."""
    for text in texts:
        start = rendered.find(text)
        assert start >= 0, text
        while start >= 0:
            for (s, e), m in zip(enc["offset_mapping"], mask):
                if max(s, start) < min(e, start + len(text)):
                    assert m == 0, f"token {rendered[s:e]!r} of {text!r} is trained"
            start = rendered.find(text, start + 1)


# --- Qwen2.5 (ChatML) -------------------------------------------------------------------------

QWEN_HEADER, QWEN_EOT = "<|im_start|>assistant\n", "<|im_end|>"

QWEN_CHAT = [
    {"role": "system", "content": "You are a terse geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy? Answer in one word."},
    {"role": "assistant", "content": "Rome."},
]


@pytest.fixture(scope="module")
def qwen_patched():
    original = corpus("trl/qwen2_5.jinja")
    return original, patched("trl/qwen2_5.jinja").template


def test_qwen_multi_turn(qwen_tokenizer, qwen_patched, with_template):
    original, patched = qwen_patched
    with_template(qwen_tokenizer, original)
    turns = [Turn(m["content"], QWEN_HEADER, QWEN_EOT) for m in QWEN_CHAT if m["role"] == "assistant"]
    rendered, enc, mask, trained = check_mask(qwen_tokenizer, original, patched, QWEN_CHAT, turns)
    assert "".join(trained) == "Paris is the capital of France.<|im_end|>Rome.<|im_end|>"
    assert_outside(rendered, enc, mask, "<|im_start|>assistant\n", "\n<|im_start|>", "terse", "Italy?")
    # the "\n" after each assistant <|im_end|> is its own, untrained token
    offsets = enc["offset_mapping"]
    for i, (s, e) in enumerate(offsets[:-1]):
        if rendered[s:e] == "<|im_end|>" and mask[i]:
            assert rendered[offsets[i + 1][0] : offsets[i + 1][1]] == "\n" and mask[i + 1] == 0


def test_qwen_default_system_and_generation_prompt(qwen_tokenizer, qwen_patched, with_template):
    original, patched = qwen_patched
    with_template(qwen_tokenizer, original)
    messages = QWEN_CHAT[1:4]  # no system message: the template adds its own; ends with a user turn
    turns = [Turn("Paris is the capital of France.", QWEN_HEADER, QWEN_EOT)]
    rendered, enc, mask, trained = check_mask(
        qwen_tokenizer, original, patched, messages, turns, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n") and "You are Qwen" in rendered
    assert mask[-3:] == [0, 0, 0]  # the generation prompt is not trained
    assert "".join(trained) == "Paris is the capital of France.<|im_end|>"


def test_qwen_straddling_token_at_content_start(qwen_tokenizer, qwen_patched, with_template):
    """Content that starts with newlines: Qwen's pre-tokeniser merges the header's "\\n" with them into
    one token that straddles the header/content edge; it holds generated characters, so it is trained."""
    original, patched = qwen_patched
    with_template(qwen_tokenizer, original)
    content = "\n\n- first point\n- second point"
    messages = [{"role": "user", "content": "List two points."}, {"role": "assistant", "content": content}]
    rendered, enc, mask, _ = check_mask(
        qwen_tokenizer, original, patched, messages, [Turn(content, QWEN_HEADER, QWEN_EOT)]
    )
    start = rendered.index(content)
    straddling = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < start < e]
    assert len(straddling) == 1, "expected one token spanning header and content"
    s, e = enc["offset_mapping"][straddling[0]]
    assert rendered[s:e] == "\n\n\n" and mask[straddling[0]] == 1


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OSLO_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
OSLO_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.mark.parametrize("preamble", ["", "Let me look that up."], ids=["call_only", "content_then_call"])
def test_qwen_tool_calls(qwen_tokenizer, qwen_patched, with_template, preamble):
    """A tool-calling turn is trained from the first generated character (not the header's "\n")
    through <|im_end|>; the tool result is not trained."""
    original, patched = qwen_patched
    with_template(qwen_tokenizer, original)
    messages = [
        {"role": "system", "content": "You answer weather questions."},
        {"role": "user", "content": "How warm is Oslo now?"},
        {"role": "assistant", "content": preamble, "tool_calls": [OSLO_CALL]},
        {"role": "tool", "content": '{"celsius": 3}'},
        {"role": "assistant", "content": "It is 3 degrees Celsius in Oslo."},
    ]
    # Documented behaviour: Qwen2.5 writes the newline after the header inside the tool-call loop
    # ('\n<tool_call>'), where it is generated text whenever content precedes the call; with no content
    # that same newline is trained too (whitespace only; the header's own characters stay outside).
    turns = [
        Turn(
            preamble or '<tool_call>\n{"name": "get_weather"',
            QWEN_HEADER if preamble else "<|im_start|>assistant",
            QWEN_EOT,
        ),
        Turn("It is 3 degrees Celsius in Oslo.", QWEN_HEADER, QWEN_EOT),
    ]
    rendered, enc, mask, trained = check_mask(qwen_tokenizer, original, patched, messages, turns, tools=[WEATHER_TOOL])
    first_turn = (preamble if preamble else "") + "\n" + OSLO_CALL_TEXT + "<|im_end|>"
    assert "".join(trained) == first_turn + "It is 3 degrees Celsius in Oslo.<|im_end|>"
    assert_outside(rendered, enc, mask, '{"celsius": 3}', "<tool_response>", '"description"', "<|im_start|>assistant")


def test_qwen_only_last_turn(qwen_tokenizer, with_template):
    original = corpus("trl/qwen2_5.jinja")
    patched = templatekit.patch_template(original, only_last_turn=True).template
    with_template(qwen_tokenizer, original)
    turns = [Turn("Rome.", QWEN_HEADER, QWEN_EOT)]
    _, _, _, trained = check_mask(qwen_tokenizer, original, patched, QWEN_CHAT, turns)
    assert "".join(trained) == "Rome.<|im_end|>"


# --- Llama 3.1 --------------------------------------------------------------------------------

LLAMA_EOT = "<|eot_id|>"


def llama_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def test_llama3_multi_turn(llama3_tokenizer, with_template):
    original = corpus("trl/llama3_1.jinja")
    tagged = patched("trl/llama3_1.jinja").template
    with_template(llama3_tokenizer, original)
    messages = [
        {"role": "system", "content": "You are a terse geography tutor."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "  Paris is the capital of France.\n"},  # the template trims it
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    turns = [
        Turn("Paris is the capital of France.", llama_header("assistant"), LLAMA_EOT),
        Turn("Rome.", llama_header("assistant"), LLAMA_EOT),
    ]
    rendered, enc, mask, trained = check_mask(llama3_tokenizer, original, tagged, messages, turns)
    assert rendered.startswith("<|begin_of_text|>") and mask[0] == 0
    assert "".join(trained) == "Paris is the capital of France.<|eot_id|>Rome.<|eot_id|>"
    assert_outside(rendered, enc, mask, "Cutting Knowledge Date", "<|start_header_id|>assistant<|end_header_id|>\n\n")


RULER = "justice_william_h_rehnquist"


def test_llama3_custom_role(llama3_tokenizer, with_template):
    """Llama 3.1 renders any role name as a header; train_roles picks which roles are trained."""
    original = corpus("trl/llama3_1.jinja")
    patched = templatekit.patch_template(original, train_roles=(RULER,)).template
    with_template(llama3_tokenizer, original)
    messages = [
        {"role": "system", "content": "This is a transcript of oral argument."},
        {"role": "user", "content": "Mr. Chief Justice, and may it please the Court."},
        {"role": RULER, "content": "We will hear argument first this morning."},
        {"role": "assistant", "content": "A note from the clerk, not trained."},
        {"role": "user", "content": "The statute is unambiguous."},
        {"role": RULER, "content": "Then why are we here, counsel?"},
    ]
    turns = [
        Turn("We will hear argument first this morning.", llama_header(RULER), LLAMA_EOT),
        Turn("Then why are we here, counsel?", llama_header(RULER), LLAMA_EOT),
    ]
    rendered, enc, mask, trained = check_mask(llama3_tokenizer, original, patched, messages, turns)
    assert llama_header(RULER) in rendered
    assert "".join(trained) == (
        "We will hear argument first this morning.<|eot_id|>Then why are we here, counsel?<|eot_id|>"
    )
    assert_outside(rendered, enc, mask, "A note from the clerk, not trained.", RULER, "oral argument")


# --- Mistral ----------------------------------------------------------------------------------

MISTRAL_CHAT = [
    {"role": "system", "content": "You are a terse geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.mark.parametrize(
    ("template", "fixture", "first_token"),
    [
        ("axolotl/mistral_v2v3.jinja", "mistral_tokenizer", "▁Paris"),
        ("axolotl/mistral_v1.jinja", "mistral_v1_tokenizer", "▁Paris"),
        ("unsloth/mistral.jinja", "mistral_v1_tokenizer", "Par"),  # "[/INST]" + content, no space
    ],
)
def test_mistral_inst(request, with_template, template, fixture, first_token):
    """[INST] templates: the reply follows "[/INST]" (in two of them after a space that the SentencePiece
    "▁" token of the reply's first word carries -- a token straddling the span start, trained) and
    "</s>" ends it. The system message is folded into a user turn (or, in mistral_v2v3, only into a
    final user turn, so it is absent here)."""
    tokenizer = request.getfixturevalue(fixture)
    original = corpus(template)
    tagged = patched(template).template
    with_template(tokenizer, original)
    turns = [Turn(m["content"], "[/INST]", "</s>") for m in MISTRAL_CHAT if m["role"] == "assistant"]
    rendered, enc, mask, trained = check_mask(tokenizer, original, tagged, MISTRAL_CHAT, turns)
    tokens = [tokenizer.convert_ids_to_tokens(i) for i, m in zip(enc["input_ids"], mask) if m]
    assert tokens[0] == first_token and tokens[-1] == "</s>" and tokens.count("</s>") == 2
    assert "".join(trained).replace(" ", "") == "Paris is the capital of France.</s>Rome.</s>".replace(" ", "")
    outside = ["capital of France?", "And of Italy?", "[/INST]", "[INST]"]
    if template != "axolotl/mistral_v2v3.jinja":
        outside.append("terse geography")
    assert_outside(rendered, enc, mask, *outside)
    assert enc["input_ids"][0] == tokenizer.bos_token_id and mask[0] == 0
