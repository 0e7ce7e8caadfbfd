"""prepare_dataset(per_turn=True) and the history note, on real templates with real tokenizers built offline.

Qwen3 drops the reasoning of assistant turns before the last user message, so a past turn renders unlike the
turn as generated; Qwen2.5 and Llama 3.1 render history as generated. Per-turn rows are checked against
transformers' own `apply_chat_template(messages[:k + 1])` (the original template, tokenized without special
tokens as the template writes BOS), and the trained tokens against the text the model generates after its
prompt `apply_chat_template(messages[:k], add_generation_prompt=True)` up to and including the stop marker.
"""

from __future__ import annotations

import json
import logging
import random
import warnings

import datasets
import pytest
import tokenizers_offline
from _corpus import patched as corpus_patch
from _paths import corpus_file
from tokenizers_offline import with_chat_template

from templatekit import check_template, cli, prepare_dataset
from templatekit.errors import HistoryMismatchWarning
from templatekit.training.dataset import truncate_row

Dataset, IterableDataset = datasets.Dataset, datasets.IterableDataset

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]
# template, tokenizer builder, the stop marker, whether the template renders history unlike generated turns,
# whether conversations carry tool calls (Llama 3.1's template allows one call per turn and no content then).
CASES = {
    "qwen3": ("trl/qwen3.jinja", lambda: tokenizers_offline.qwen_tokenizer(qwen3=True), "<|im_end|>", True, True),
    "qwen2_5": ("trl/qwen2_5.jinja", tokenizers_offline.qwen_tokenizer, "<|im_end|>", False, True),
    "llama3_1": ("trl/llama3_1.jinja", tokenizers_offline.llama3_tokenizer, "<|eot_id|>", False, False),
}


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(WORDS, k=count))


def conversations(count: int, *, seed: int, tool_calls: bool) -> list[list[dict]]:
    """Conversations of 1-3 user turns; replies with reasoning, and (where the template takes them) tool calls."""
    rng = random.Random(seed)
    rows = []
    for row in range(count):
        messages = [{"role": "system", "content": f"system {row} {words(rng, 5)}"}]
        for turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": f"question {row}.{turn} {words(rng, 8)}"})
            if tool_calls and rng.random() < 0.4:
                call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": words(rng, 1)}}}
                messages.append(
                    {
                        "role": "assistant",
                        "content": f"calling {row}.{turn}",
                        "reasoning_content": f"plan {row}.{turn} {words(rng, 4)}",
                        "tool_calls": [call],
                    }
                )
                messages.append({"role": "tool", "content": f"sunny {row}.{turn}"})
            messages.append(
                {
                    "role": "assistant",
                    "content": f"answer {row}.{turn} {words(rng, 6)}",
                    "reasoning_content": f"thought {row}.{turn} {words(rng, 5)}",
                }
            )
        rows.append(messages)
    return rows


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    path, build, stop, rewrites, tool_calls = CASES[request.param]
    tokenizer = with_chat_template(build(), corpus_file(path).read_text(encoding="utf-8"))
    rows = conversations(12, seed=7, tool_calls=tool_calls)
    return {
        "name": request.param,
        "path": path,
        "tokenizer": tokenizer,
        "stop": stop,
        "rewrites": rewrites,
        "rows": rows,
    }


@pytest.fixture(scope="module")
def qwen3():
    tokenizer = with_chat_template(
        tokenizers_offline.qwen_tokenizer(qwen3=True), corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8")
    )
    return tokenizer


def data(rows: list[list[dict]]) -> Dataset:
    return Dataset.from_dict({"messages": rows, "tools": [TOOLS] * len(rows)})


def per_turn_rows(tokenizer, rows, **options) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", HistoryMismatchWarning)  # per_turn=True never warns
        prepared = prepare_dataset(data(rows), tokenizer, per_turn=True, progress=False, **options)
    return [dict(row) for row in prepared]


def expected_row(tokenizer, messages: list[dict], turn: int, stop: str) -> tuple[list[int], str]:
    """transformers' rendering of `messages[:turn + 1]` tokenized, and the text the model generates for the turn."""
    render = tokenizer.apply_chat_template
    text = render(messages[: turn + 1], tools=TOOLS, tokenize=False)
    prompt = render(messages[:turn], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)
    generated = text[len(prompt) :]
    generated = generated[: generated.rindex(stop) + len(stop)]  # through the stop marker, not the newline after
    return tokenizer(text, add_special_tokens=False)["input_ids"], generated


def trained_text(tokenizer, row: dict) -> str:
    mask = row["assistant_masks"]
    positions = [i for i, m in enumerate(mask) if m]
    assert positions and positions == list(range(positions[0], positions[-1] + 1)), "one contiguous trained span"
    return tokenizer.decode([row["input_ids"][i] for i in positions])


def trained_turns(messages: list[dict]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1)]


@pytest.mark.slow
def test_rows_are_the_turns_as_generated(case):
    tokenizer, rows, stop = case["tokenizer"], case["rows"], case["stop"]
    prepared = per_turn_rows(tokenizer, rows)
    wanted = [(source, turn) for source, messages in enumerate(rows) for turn in trained_turns(messages)]
    assert [(r["source_row"], r["turn_index"]) for r in prepared] == wanted
    assert len(wanted) > len(rows)  # several turns per conversation
    for row in prepared:
        messages = rows[row["source_row"]]
        ids, generated = expected_row(tokenizer, messages, row["turn_index"], stop)
        assert row["input_ids"] == ids
        assert row["attention_mask"] == [1] * len(ids)
        # Only turn k: its reasoning, content, tool calls and stop marker; nothing of the earlier turns.
        assert trained_text(tokenizer, row) == generated
        assert generated.endswith(stop) and messages[row["turn_index"]]["content"] in generated


def test_qwen3_rows_carry_the_reasoning_history_drops(qwen3):
    rows = conversations(6, seed=3, tool_calls=False)
    prepared = per_turn_rows(qwen3, rows)
    with pytest.warns(HistoryMismatchWarning, match="per_turn=True"):
        whole = prepare_dataset(data(rows), qwen3, progress=False, add_labels=True)
    for row in prepared:
        turn = rows[row["source_row"]][row["turn_index"]]
        assert trained_text(qwen3, row).startswith(f"<think>\n{turn['reasoning_content']}\n</think>\n\n")
    # Trained on the whole conversation, an earlier turn loses its reasoning: what per_turn is for.
    multi = next(i for i, messages in enumerate(rows) if len(trained_turns(messages)) > 1)
    first = rows[multi][trained_turns(rows[multi])[0]]
    whole_trained = qwen3.decode([t for t in whole[multi]["labels"] if t != -100])
    assert first["content"] in whole_trained and first["reasoning_content"] not in whole_trained


def test_only_the_last_message_is_trained_in_each_row(case):
    """Every row ends with its trained turn; the earlier assistant turns in it are context."""
    tokenizer, rows = case["tokenizer"], case["rows"]
    for row in per_turn_rows(tokenizer, rows, add_labels=True):
        messages = rows[row["source_row"]][: row["turn_index"] + 1]
        trained = tokenizer.decode([t for t in row["labels"] if t != -100])
        for earlier in trained_turns(messages)[:-1]:
            assert messages[earlier]["content"] not in trained


def test_per_turn_false_is_unchanged(case):
    tokenizer, rows = case["tokenizer"], case["rows"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryMismatchWarning)
        default = prepare_dataset(data(rows), tokenizer, progress=False)
        explicit = prepare_dataset(data(rows), tokenizer, progress=False, per_turn=False)
    assert default.column_names == ["input_ids", "attention_mask", "assistant_masks"]
    assert default.to_list() == explicit.to_list() and len(default) == len(rows)


def test_weights_and_last_response_only(qwen3):
    rows = conversations(6, seed=5, tool_calls=True)
    rows = [[{**m, "weight": 0} if i == trained_turns(ms)[0] else m for i, m in enumerate(ms)] for ms in rows]
    prepared = per_turn_rows(qwen3, rows)
    assert [(r["source_row"], r["turn_index"]) for r in prepared] == [
        (source, turn) for source, messages in enumerate(rows) for turn in trained_turns(messages)
    ]
    last = per_turn_rows(qwen3, rows, last_response_only=True)
    wanted = [(s, trained_turns(m)[-1]) for s, m in enumerate(rows) if trained_turns(m)]
    assert [(r["source_row"], r["turn_index"]) for r in last] == wanted


@pytest.mark.slow
@pytest.mark.parametrize("truncation", ["right", "left", "drop"])
def test_truncation_acts_on_each_row(qwen3, truncation, caplog):
    rows = conversations(10, seed=9, tool_calls=True)
    full = per_turn_rows(qwen3, rows)
    limit = sorted(len(r["input_ids"]) for r in full)[len(full) // 2]
    with caplog.at_level(logging.WARNING, logger="templatekit.training.dataset"):
        cut = per_turn_rows(qwen3, rows, max_length=limit, truncation=truncation)
    expected = []
    for row in full:
        kept = truncate_row(row["input_ids"], row["assistant_masks"], limit, truncation)
        if kept is not None:
            expected.append(
                {**row, "input_ids": kept[0], "assistant_masks": kept[1], "attention_mask": [1] * len(kept[0])}
            )
    assert cut == expected
    dropped = len(full) - len(expected)
    if truncation == "left":  # each row ends on its trained turn, so keeping the end keeps it
        assert not dropped and "dropping" not in caplog.text
        assert all(row["assistant_masks"][-2] for row in cut)  # the stop marker, before the newline after it
    else:  # half the rows are longer than the limit: "drop" drops them, "right" cuts their trained turn
        assert dropped and f"dropping {dropped} row" in caplog.text


@pytest.mark.slow
def test_kept_columns_iterable_and_num_proc(qwen3):
    rows = conversations(8, seed=13, tool_calls=True)
    reference = per_turn_rows(qwen3, rows)
    kept = [dict(r) for r in prepare_dataset(data(rows), qwen3, per_turn=True, remove_columns=False, progress=False)]
    assert [r["messages"] for r in kept] == [data(rows)[r["source_row"]]["messages"] for r in reference]
    assert [{k: r[k] for k in reference[0]} for r in kept] == reference
    stream = data(rows).to_iterable_dataset()
    assert [dict(r) for r in prepare_dataset(stream, qwen3, per_turn=True, batch_size=3)] == reference
    parallel = prepare_dataset(data(rows), qwen3, per_turn=True, num_proc=2, batch_size=2, progress=False)
    assert parallel.to_list() == reference


# ------------------------------------------------------------------------------------------------ detection


@pytest.mark.slow
def test_history_note(case):
    patched = corpus_patch(case["path"])  # patch_template(the tokenizer's template)
    checked = check_template(patched.template)
    assert checked.ok
    for report in (patched.report, checked):
        if case["rewrites"]:
            assert report.history_mismatch in report.notes
            assert "first difference at character 0 of the turn" in report.history_mismatch
            assert "history 'tkassistcon" in report.history_mismatch and "generated '<think>" in report.history_mismatch
            assert "per_turn=True" in report.history_mismatch
        else:
            assert report.history_mismatch is None
            assert not any("history renders" in note for note in report.notes)


@pytest.mark.slow
def test_check_prints_the_note_and_keeps_its_exit_code(case, tmp_path, capsys):
    path = tmp_path / "chat_template.jinja"
    path.write_text(corpus_patch(case["path"]).template, encoding="utf-8")
    code = cli.main(["check", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert ("note: history renders message" in out) == case["rewrites"]
    code = cli.main(["check", "--json", str(path)])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["ok"]
    notes = document["templates"][0]["notes"]
    assert any(note.startswith("history renders message") for note in notes) == case["rewrites"], notes


def test_prepare_dataset_warns_without_per_turn(case):
    tokenizer, rows = case["tokenizer"], case["rows"][:3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_dataset(data(rows), tokenizer, progress=False)
        prepare_dataset(data(rows), tokenizer, progress=False, per_turn=True)
    history = [w for w in caught if issubclass(w.category, HistoryMismatchWarning)]
    assert len(history) == int(case["rewrites"])  # once, and only without per_turn
    if history:
        assert "per_turn=True" in str(history[0].message) and history[0].filename == __file__


@pytest.mark.slow
def test_report_and_patch_carry_the_note(case, tmp_path, capsys):
    path = tmp_path / f"{case['name']}.jinja"
    path.write_text(case["tokenizer"].chat_template, encoding="utf-8")
    assert cli.main(["report", "--json", str(path)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["templates"]
    assert entry["status"] == "patched" and bool(entry["note"]) == case["rewrites"]
    assert cli.main(["report", str(path)]) == 0
    assert ("per_turn=True" in capsys.readouterr().out) == case["rewrites"]
    assert cli.main(["patch", str(path), "-o", str(tmp_path / "out.jinja")]) == 0
    assert ("note: history renders message" in capsys.readouterr().err) == case["rewrites"]
