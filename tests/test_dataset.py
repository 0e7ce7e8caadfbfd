"""prepare_dataset on real templates and real tokenizers, checked against sentinel truth.

Every conversation carries unique contents, so the expected trained characters are found in the rendered text
by plain search: each assistant content plus the end-of-turn marker written right after it. The expected mask is
then the stated rule (`spans_to_token_mask`) over the tokenizer's own offsets, and the expected ids are what
`apply_chat_template(tokenize=True)` gives with the *original* template (so the text is unchanged and BOS is
not doubled).
"""

from __future__ import annotations

import copy

import datasets
import pytest
from _paths import corpus_file
from _training import conversations, truth_spans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers_offline import with_chat_template

import templatekit
from templatekit import DatasetRowError, prepare_dataset
from templatekit.training.masks import encoding_token_mask, spans_to_token_mask

Dataset, IterableDataset = datasets.Dataset, datasets.IterableDataset

# (tokenizer fixture, corpus template, end-of-turn marker, whether the template keeps the system prompt)
CASES = {
    "qwen2_5": ("qwen_tokenizer", "trl/qwen2_5.jinja", "<|im_end|>"),
    "llama3_1": ("llama3_tokenizer", "trl/llama3_1.jinja", "<|eot_id|>"),
    "llama3": ("llama3_tokenizer", "unsloth/llama-3.jinja", "<|eot_id|>"),
    "mistral": ("mistral_tokenizer", "unsloth/mistral.jinja", "</s>"),
    "mistral_v2v3": ("mistral_tokenizer", "axolotl/mistral_v2v3.jinja", "</s>"),
}


def expected_row(tokenizer, template: str, messages: list[dict], eot: str, *, last_only: bool = False):
    ids = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True)["input_ids"]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == ids
    spans = truth_spans(text, messages, eot)
    return ids, spans_to_token_mask(encoded["offset_mapping"], spans[-1:] if last_only else spans)


def fixture_of(case: str) -> str:
    return CASES[case][0]


def setup_case(request, case: str):
    fixture, path, eot = CASES[case]
    tokenizer = with_chat_template(request.getfixturevalue(fixture), corpus_file(path).read_text(encoding="utf-8"))
    system = case != "mistral_v2v3"  # that template drops the system prompt
    return tokenizer, eot, conversations(12, system=system)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_match_sentinel_truth(request, case):
    tokenizer, eot, rows = setup_case(request, case)
    prepared = prepare_dataset(Dataset.from_dict({"messages": rows}), tokenizer, progress=False)
    assert prepared.column_names == ["input_ids", "attention_mask", "assistant_masks"]
    for messages, got in zip(rows, prepared):
        ids, mask = expected_row(tokenizer, tokenizer.chat_template, messages, eot)
        assert got["input_ids"] == ids
        assert got["assistant_masks"] == mask
        assert got["attention_mask"] == [1] * len(ids)
        # read back: the trained tokens spell the replies and their end-of-turn markers, nothing else
        trained = tokenizer.decode([t for t, m in zip(got["input_ids"], got["assistant_masks"]) if m])
        replies = "".join(m["content"] + eot for m in messages if m["role"] == "assistant")
        if fixture_of(case) == "mistral_tokenizer":
            # a SentencePiece "▁reply" token carries the space before the reply (trained, as the rule says)
            trained, replies = "".join(trained.split()), "".join(replies.split())
        assert trained == replies


def test_llama3_bos_written_once(llama3_tokenizer):
    tokenizer = with_chat_template(llama3_tokenizer, corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8"))
    prepared = prepare_dataset(Dataset.from_dict({"messages": conversations(2)}), tokenizer, progress=False)
    ids = prepared[0]["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["qwen2_5", "llama3", "mistral"])
def test_delimiter_fallback_gives_the_same_masks(request, case):
    """Forced onto the delimiter fallback, the same conversations get the same (exact) masks."""
    tokenizer, eot, rows = setup_case(request, case)
    data = Dataset.from_dict({"messages": rows})
    tags = prepare_dataset(data, tokenizer, progress=False)
    delimiters = prepare_dataset(data, tokenizer, fallback=True, progress=False)
    assert templatekit.SpanRenderer(tokenizer.chat_template, fallback=True).mode == "delimiters"
    assert delimiters["input_ids"] == tags["input_ids"]
    assert delimiters["assistant_masks"] == tags["assistant_masks"]


def test_iterable_dataset_same_as_dataset(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    rows = conversations(9, seed=3)
    eager = prepare_dataset(Dataset.from_dict({"messages": rows}), tokenizer, add_labels=True, progress=False)
    stream = IterableDataset.from_generator(lambda: ({"messages": m} for m in rows))
    lazy = prepare_dataset(stream, tokenizer, add_labels=True, batch_size=4)
    assert isinstance(lazy, IterableDataset)
    assert lazy.column_names == ["input_ids", "attention_mask", "assistant_masks", "labels"]
    assert list(lazy) == list(eager)


@pytest.mark.slow
def test_num_proc_two_gives_identical_results(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    data = Dataset.from_dict({"messages": conversations(40, seed=5)})
    single = prepare_dataset(data, tokenizer, add_labels=True, batch_size=8, progress=False)
    double = prepare_dataset(data, tokenizer, add_labels=True, batch_size=8, num_proc=2, progress=False)
    assert double.to_dict() == single.to_dict()


@pytest.mark.slow
def test_errors_from_a_worker_process_keep_the_row(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    rows = conversations(10, seed=1)
    rows[7][1]["weight"] = 5
    with pytest.raises(DatasetRowError, match=r"row 7, message 1: weight must be 0 or 1"):
        prepare_dataset(Dataset.from_dict({"messages": rows}), tokenizer, num_proc=2, batch_size=2, progress=False)


def test_labels_are_ids_inside_the_mask(llama3_tokenizer):
    tokenizer = with_chat_template(llama3_tokenizer, corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8"))
    prepared = prepare_dataset(
        Dataset.from_dict({"messages": conversations(6)}), tokenizer, add_labels=True, progress=False
    )
    for row in prepared:
        assert row["labels"] == [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]
        assert -100 in row["labels"] and any(label != -100 for label in row["labels"])


def test_max_length_truncates_ids_and_masks_alike(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    data = Dataset.from_dict({"messages": conversations(5)})
    full = prepare_dataset(data, tokenizer, add_labels=True, progress=False)
    cut = prepare_dataset(data, tokenizer, add_labels=True, max_length=20, progress=False)
    assert all(len(a["input_ids"]) > 20 for a in full)
    # Rows whose trained tokens were all cut are dropped (truncation="right", the default, keeps the start).
    expected = [{key: value[:20] for key, value in a.items()} for a in full if any(a["assistant_masks"][:20])]
    assert list(cut) == expected


def test_last_response_only(request):
    tokenizer, eot, rows = setup_case(request, "qwen2_5")
    prepared = prepare_dataset(
        Dataset.from_dict({"messages": rows}), tokenizer, last_response_only=True, progress=False
    )
    for messages, got in zip(rows, prepared):
        _, mask = expected_row(tokenizer, tokenizer.chat_template, messages, eot, last_only=True)
        assert got["assistant_masks"] == mask


def test_weight_zero_rows_are_kept_untrained(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    rows = conversations(3)
    for message in rows[1]:
        message["weight"] = 0 if message["role"] == "assistant" else 1
    prepared = prepare_dataset(Dataset.from_list([{"messages": m} for m in rows]), tokenizer, progress=False)
    assert set(prepared[1]["assistant_masks"]) == {0}
    assert 1 in prepared[0]["assistant_masks"] and 1 in prepared[2]["assistant_masks"]


def test_kept_columns_and_custom_field_names(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    data = Dataset.from_dict({"chat": conversations(2), "source": ["a", "b"]})
    prepared = prepare_dataset(data, tokenizer, messages_field="chat", remove_columns=False, progress=False)
    assert prepared.column_names == ["chat", "source", "input_ids", "attention_mask", "assistant_masks"]
    assert prepared["source"] == ["a", "b"]


def test_template_argument_and_named_templates(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, None)
    chatml = corpus_file("unsloth/chatml.jinja").read_text(encoding="utf-8")
    qwen = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    data = Dataset.from_dict({"messages": conversations(3, system=False)})
    tokenizer.chat_template = {"default": chatml, "qwen": qwen}
    by_default = prepare_dataset(data, tokenizer, progress=False)
    by_name = prepare_dataset(data, tokenizer, template="qwen", progress=False)
    by_text = prepare_dataset(data, tokenizer, template=qwen, progress=False)
    assert by_name.to_dict() == by_text.to_dict()
    # Qwen2.5 adds its default system prompt when there is none; ChatML does not
    assert len(by_name[0]["input_ids"]) > len(by_default[0]["input_ids"])
    tokenizer.chat_template = {"tool_use": qwen}
    with pytest.raises(ValueError, match="none is called 'default'"):
        prepare_dataset(data, tokenizer, progress=False)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        prepare_dataset(data, tokenizer, progress=False)


def test_tools_column_reaches_the_template(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "tkschemaDESC", "parameters": {"type": "object"}},
    }
    rows = conversations(2)
    data = Dataset.from_list([{"messages": rows[0], "tools": [tool]}, {"messages": rows[1], "tools": None}])
    prepared = prepare_dataset(data, tokenizer, progress=False)
    assert "tkschemaDESC" in tokenizer.decode(prepared[0]["input_ids"])
    assert "tkschemaDESC" not in tokenizer.decode(prepared[1]["input_ids"])


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.fixture
def qwen(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    return tokenizer


def test_empty_dataset(qwen):
    with pytest.raises(ValueError, match="the dataset is empty"):
        prepare_dataset(Dataset.from_dict({"messages": []}), qwen, progress=False)
    with pytest.raises(ValueError, match="the dataset is empty"):
        prepare_dataset(IterableDataset.from_generator(lambda: iter([{"messages": [{"role": "u"}]}][:0])), qwen)


def test_missing_column(qwen):
    with pytest.raises(ValueError, match=r"no column 'messages' \(columns: conversation\)"):
        prepare_dataset(Dataset.from_dict({"conversation": conversations(1)}), qwen, progress=False)


def test_not_a_fast_tokenizer_or_not_a_dataset(qwen):
    with pytest.raises(TypeError, match="datasets.Dataset or IterableDataset"):
        prepare_dataset(conversations(1), qwen)
    slow = copy.copy(qwen)
    slow.__class__ = type("Slow", (type(qwen),), {"is_fast": False})
    with pytest.raises(TypeError, match="fast tokenizer"):
        prepare_dataset(Dataset.from_dict({"messages": conversations(1)}), slow, progress=False)


def test_missing_content_names_row_and_message(qwen):
    rows = conversations(4)
    rows[2][3] = {"role": "assistant"}
    data = Dataset.from_list([{"messages": m} for m in rows])  # Arrow stores the absent key as None
    with pytest.raises(DatasetRowError, match=r"^row 2, message 3: the assistant message has no content") as caught:
        prepare_dataset(data, qwen, progress=False)
    assert (caught.value.row, caught.value.message) == (2, 3)


def test_non_string_content_names_row_and_message(qwen):
    data = Dataset.from_dict({"messages": [[{"role": "user", "content": 5}, {"role": "assistant", "content": 6}]]})
    with pytest.raises(DatasetRowError, match=r"^row 0, message 0: content must be a string .* got int"):
        prepare_dataset(data, qwen, progress=False)


def test_content_blocks_are_accepted(qwen):
    """User content as a list of blocks (the multimodal shape), mixed with strings in one Json column."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
        {"role": "assistant", "content": "firstREPLY one"},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": "stringREPLY two"},
    ]
    features = datasets.Features({"messages": datasets.Json()})
    data = Dataset.from_list([{"messages": messages}], features=features)
    template = corpus_file("trl/qwen2_5_vl.jinja").read_text(encoding="utf-8")
    prepared = prepare_dataset(data, qwen, template=template, progress=False)
    ids, mask = prepared[0]["input_ids"], prepared[0]["assistant_masks"]
    assert "<|im_start|>user\nhello there<|im_end|>" in qwen.decode(ids)
    assert qwen.decode([t for t, m in zip(ids, mask) if m]) == "firstREPLY one<|im_end|>stringREPLY two<|im_end|>"


def test_unknown_role_the_template_rejects(mistral_tokenizer):
    tokenizer = with_chat_template(mistral_tokenizer, corpus_file("unsloth/mistral.jinja").read_text(encoding="utf-8"))
    rows = conversations(3, system=False)
    rows[1].insert(1, {"role": "narrator", "content": "meanwhile"})
    with pytest.raises(DatasetRowError, match=r"^row 1: .*message 1 has role 'narrator'.*Only user and assistant"):
        prepare_dataset(Dataset.from_dict({"messages": rows}), tokenizer, progress=False)


def test_unknown_role_the_template_renders_stays_untrained(qwen):
    rows = conversations(2)
    rows[0].insert(2, {"role": "narrator", "content": "narratorSENTINEL meanwhile"})
    data = Dataset.from_dict({"messages": rows})
    chatml = corpus_file("axolotl/chatml.jinja").read_text(encoding="utf-8")
    prepared = prepare_dataset(data, qwen, template=chatml, progress=False)
    ids, mask = prepared[0]["input_ids"], prepared[0]["assistant_masks"]
    assert "<|im_start|>narrator\nnarratorSENTINEL" in qwen.decode(ids)
    assert "narratorSENTINEL" not in qwen.decode([t for t, m in zip(ids, mask) if m])
    assert mask == expected_row(qwen, chatml, rows[0], "<|im_end|>")[1]
    # Qwen2.5's own template silently skips roles it does not know: the row renders without it, untrained
    skipped = prepare_dataset(data, qwen, progress=False)
    assert "narratorSENTINEL" not in qwen.decode(skipped[0]["input_ids"])
    assert skipped[0]["assistant_masks"] == expected_row(qwen, qwen.chat_template, rows[0], "<|im_end|>")[1]


SKIPS_EMPTY = (
    "{% for m in messages %}{% if m.content %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_assistant_message_the_template_drops(qwen):
    """A template that skips empty messages: plainly, the dropped reply trains nothing (it is not in the
    text); under a policy that must tell the replies apart, the row is refused by index."""
    rows = conversations(3, system=False)
    rows[1][1]["content"] = ""
    data = Dataset.from_dict({"messages": rows})
    prepared = prepare_dataset(data, qwen, template=SKIPS_EMPTY, progress=False)
    text = qwen.decode(prepared[1]["input_ids"])
    assert text.count("<|im_start|>assistant") == len(rows[1]) // 2 - 1
    trained = qwen.decode([t for t, m in zip(prepared[1]["input_ids"], prepared[1]["assistant_masks"]) if m])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in rows[1][3::2])
    with pytest.raises(DatasetRowError, match=r"^row 1: the template rendered .* drops or merges"):
        prepare_dataset(data, qwen, template=SKIPS_EMPTY, last_response_only=True, progress=False)


def test_row_error_message_format():
    assert str(DatasetRowError("bad", row=4)) == "row 4: bad"
    assert str(DatasetRowError("bad", row=4, message=0)) == "row 4, message 0: bad"
    assert str(DatasetRowError("row 4: bad")) == "row 4: bad"  # as rebuilt after crossing a process boundary


# --- the span-edge mask equals the stated rule ----------------------------------------------------------------

TEXT = st.lists(
    st.sampled_from(
        [
            "Hello",
            " world",
            "wonder",
            "ful",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            "!",
            "12345",
            "é",
            "e\u0301",
            "漢字",
            "𝔘",
            "🙂",
            "'s",
            "<|im_end|>",
            "</s>",
            "[INST]",
            "▁x",
        ]
    ),
    min_size=1,
    max_size=24,
).map("".join)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen_tokenizer", "llama3_tokenizer", "mistral_tokenizer", "mistral_v1_tokenizer"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_span_edge_mask_equals_the_rule(request, name, data):
    """prepare_dataset places masks from the span edges (char_to_token) instead of walking every offset; on real
    tokenizers (byte-level BPE with split characters, NFC, SentencePiece) it gives the rule's mask exactly."""
    tokenizer = request.getfixturevalue(name)
    text = data.draw(TEXT)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=0, max_size=6)))
    spans = list(zip(cuts[::2], cuts[1::2]))
    encoded = tokenizer([text], add_special_tokens=False, return_offsets_mapping=True)
    assert encoding_token_mask(encoded.encodings[0], spans, len(text)) == spans_to_token_mask(
        encoded["offset_mapping"][0], spans
    )


def test_span_edge_mask_split_character_with_unequal_pieces(qwen_tokenizer):
    """Found by the property test: " ▁" (U+2581, three UTF-8 bytes) encodes as "Ġâĸ" (space + two bytes, offsets
    (1, 3)) and "ģ" (the last byte, offsets (2, 3)). A span ending on "▁" must train both pieces."""
    text = "a \u2581x"
    encoded = qwen_tokenizer([text], add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["offset_mapping"][0] == [(0, 1), (1, 3), (2, 3), (3, 4)]
    for span in [(0, 3), (2, 3), (1, 2), (0, 4)]:
        expected = spans_to_token_mask(encoded["offset_mapping"][0], [span])
        assert encoding_token_mask(encoded.encodings[0], [span], len(text)) == expected
    assert encoding_token_mask(encoded.encodings[0], [(0, 3)], len(text)) == [1, 1, 1, 0]
