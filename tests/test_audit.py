"""`templatekit audit`: data the template silently drops, rows that train nothing, rows cut by --max-length.

Real corpus templates (Qwen2.5 ignores a `thinking` key, Gemma ignores tool calls and rejects a system message,
Qwen3 reads `reasoning_content`), the real Qwen2.5 tokenizer built offline, generated JSONL files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run
from _corpus import TOOLS
from _harness import in_child
from _paths import REPO_ROOT, corpus_file
from tokenizers_offline import with_chat_template

import templatekit
from templatekit.training.audit import audit_conversations, template_roles


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str | None, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer) -> Path:
    """A local tokenizer folder (no template in it)."""
    folder = tmp_path_factory.mktemp("qwen_tok")
    tokenizer = with_chat_template(qwen_tokenizer, None)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer) -> Path:
    """A model folder: Qwen2.5's template and its tokenizer files side by side."""
    folder = tmp_path_factory.mktemp("qwen_model")
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    tokenizer.save_pretrained(folder)
    return folder


def audit_json(capsys, *argv: object) -> tuple[int, dict, str]:
    code, out, err = run(capsys, "audit", *argv, "--format", "json")
    return code, json.loads(out), err  # json.loads refuses anything after the one document


# --------------------------------------------------------------------------------------------- data loss


@pytest.mark.slow
def test_thinking_key_dropped_by_qwen2_5_and_a_row_that_trains_nothing(capsys, tmp_path, qwen_folder, qwen_tokenizer):
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"messages": [user("Hi"), assistant("Hey", thinking="The user greets me.")]},
            {"messages": [user("2+2?"), assistant("4")]},
            {"messages": [user("Skip me"), assistant("ignored", weight=0)]},
        ],
    )
    source = corpus_file("trl/qwen2_5.jinja")
    code, doc, err = audit_json(capsys, source, "--data", data, "--tokenizer", qwen_folder)
    assert code == 1, err
    assert doc["rows"] == 3 and doc["unit"] == "tokens" and doc["mode"] == "tags"
    # "Hey<|im_end|>" and "4<|im_end|>": the answer's tokens and the end-of-turn token.
    hey = len(qwen_tokenizer("Hey", add_special_tokens=False)["input_ids"]) + 1
    four = len(qwen_tokenizer("4", add_special_tokens=False)["input_ids"]) + 1
    assert doc["trained_tokens"] == {"min": 0, "median": min(hey, four), "max": max(hey, four)}
    assert doc["rows_without_trained_tokens"] == 1
    assert doc["fields_not_rendered"] == {"messages[].thinking": 1}
    assert doc["fields_checked"]["messages[].content"] == 3  # content is rendered: checked, not lost
    assert doc["rejected_conversations"] == 0 and doc["unknown_roles"] == {}
    assert doc["rows_truncated"] is None and doc["exit_code"] == 1
    assert any("messages[].thinking" in p and f"{data}:1" in p for p in doc["problems"])
    assert any("train nothing" in p and f"{data}:3" in p for p in doc["problems"])

    code, out, err = run(capsys, "audit", source, "--data", data, "--tokenizer", qwen_folder)
    assert code == 1
    assert "rows: 3" in out
    assert f"trained tokens per row: min 0, median {min(hey, four)}, max {max(hey, four)}" in out
    assert "rows without trained tokens: 1" in out
    assert "fields the template never renders: messages[].thinking (1)" in out
    assert err == ""  # no progress bar in a pipe


def test_qwen3_drops_the_reasoning_of_earlier_turns(capsys, tmp_path):
    # Qwen3 writes the reasoning of the turns after the last user message only: an earlier turn's is lost.
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"messages": [user("Hi"), assistant("Hello!", reasoning_content="Greet back.")]},
            {
                "messages": [
                    user("Hi"),
                    assistant("Hello!", reasoning_content="Greet back."),
                    user("Bye"),
                    assistant("Bye!", reasoning_content="Say bye."),
                ]
            },
        ],
    )
    code, doc, _ = audit_json(capsys, corpus_file("trl/qwen3.jinja"), "--data", data)
    assert code == 1
    assert doc["fields_not_rendered"] == {"messages[].reasoning_content": 1}
    assert doc["fields_checked"]["messages[].reasoning_content"] == 2
    assert any(f"{data}:2" in p for p in doc["problems"])
    assert doc["unit"] == "characters" and any("characters" in note for note in doc["notes"])


def test_gemma_drops_tool_calls_and_tools_and_rejects_a_system_message(capsys, tmp_path):
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {
                "messages": [user("Weather in Paris?"), assistant("Let me check.", tool_calls=[TOOL_CALL])],
                "tools": TOOLS,
            },
            {"messages": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hi!")]},
            {"messages": [user("Hi"), assistant("Hi!")]},
        ],
    )
    code, doc, _ = audit_json(capsys, corpus_file("trl/gemma.jinja"), "--data", data)
    assert code == 1
    assert doc["fields_not_rendered"] == {
        "messages[].tool_calls[].function.arguments": 1,
        "messages[].tool_calls[].function.name": 1,
        "tools": 1,
    }
    assert doc["metadata_not_rendered"] == {"messages[].tool_calls[].id": 1}  # reported, not failing
    assert doc["rejected_conversations"] == 1
    assert doc["first_rejection"].startswith(f"{data}:2: ") and "System role not supported" in doc["first_rejection"]
    assert doc["rows"] == 3 and doc["trained_tokens"]["min"] > 0  # the rejected row is not counted as trained


@pytest.mark.slow
def test_qwen2_5_renders_tool_calls_and_clean_data_exits_0(capsys, tmp_path, qwen_folder):
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {
                "messages": [
                    user("Weather in Paris?"),
                    assistant(None, tool_calls=[TOOL_CALL]),
                    {"role": "tool", "content": "sunny"},
                    assistant("Sunny."),
                ],
                "tools": TOOLS,
            },
            {"messages": [user("Hi"), assistant("Hello!")]},
        ],
    )
    code, doc, err = audit_json(capsys, corpus_file("trl/qwen2_5.jinja"), "--data", data, "--tokenizer", qwen_folder)
    assert code == 0, doc["problems"]
    assert doc["fields_not_rendered"] == {} and doc["rejected_conversations"] == 0
    assert doc["metadata_not_rendered"] == {"messages[].tool_calls[].id": 1}
    assert doc["fields_checked"]["messages[].tool_calls[].function.arguments"] == 1
    assert doc["fields_checked"]["tools"] == 1
    code, out, _ = run(capsys, "audit", corpus_file("trl/qwen2_5.jinja"), "--data", data, "--tokenizer", qwen_folder)
    assert code == 0 and "fields the template never renders: none" in out


def test_unknown_roles_counted_and_lost_only_where_the_template_drops_them(capsys, tmp_path):
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [{"messages": [{"role": "developer", "content": "Be brief."}, user("Hi"), assistant("Hi!")]}],
    )
    chatml = tmp_path / "chatml.jinja"
    chatml.write_text(templatekit.get_template("chatml"), encoding="utf-8")
    code, doc, _ = audit_json(capsys, chatml, "--data", data)  # chatml writes any role: nothing lost
    assert code == 0 and doc["unknown_roles"] == {"developer": 1} and doc["fields_not_rendered"] == {}
    assert any("'developer'" in p for p in doc["problems"])
    code, doc, _ = audit_json(capsys, corpus_file("trl/qwen2_5.jinja"), "--data", data)  # Qwen2.5 skips it
    assert code == 1 and doc["unknown_roles"] == {"developer": 1}
    assert doc["fields_not_rendered"] == {"messages[].content": 1}


def test_roles_the_template_tests_for_are_known() -> None:
    assert "ipython" in template_roles(corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8"))
    assert template_roles("{% if message['role'] not in ['bot', 'human'] %}{% endif %}") == {"bot", "human"}
    assert template_roles("{% if %}") == set()  # unparsable: no roles, no crash


# --------------------------------------------------------------------------------------------- max length


@pytest.mark.slow
def test_max_length_counts_truncated_rows_and_those_losing_trained_tokens(capsys, tmp_path, qwen_folder):
    long_answer = " ".join(["word"] * 80)
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [{"messages": [user("Hi"), assistant("Hello!")]}, {"messages": [user("Talk"), assistant(long_answer)]}],
    )
    source = corpus_file("trl/qwen2_5.jinja")
    args = (source, "--data", data, "--tokenizer", qwen_folder, "--max-length", 60)
    code, doc, _ = audit_json(capsys, *args)
    assert code == 1
    assert doc["max_length"] == 60 and doc["rows_truncated"] == 1 and doc["rows_truncated_losing_trained_tokens"] == 1
    assert any("max_length=60" in p and f"{data}:2" in p for p in doc["problems"])
    # Keeping the end keeps part of the answer, but still cuts some of its tokens.
    code, doc, _ = audit_json(capsys, *args, "--truncation", "left")
    assert doc["rows_truncated"] == 1 and doc["rows_truncated_losing_trained_tokens"] == 1
    # A limit above every row: nothing truncated, exit 0.
    code, doc, _ = audit_json(capsys, source, "--data", data, "--tokenizer", qwen_folder, "--max-length", 500)
    assert code == 0 and doc["rows_truncated"] == 0 and doc["rows_truncated_losing_trained_tokens"] == 0
    code, out, _ = run(capsys, "audit", *args)
    assert "rows truncated (longer than 60 tokens): 1, losing trained tokens: 1" in out


@pytest.mark.slow
def test_tokenizer_found_in_the_source_folder(capsys, tmp_path, qwen_model):
    data = write_jsonl(tmp_path / "data.jsonl", [{"messages": [user("Hi"), assistant("Hello!")]}])
    code, doc, _ = audit_json(capsys, qwen_model, "--data", data, "--max-length", 100)
    assert code == 0 and doc["unit"] == "tokens" and doc["tokenizer"] == str(qwen_model)
    assert doc["rows_truncated"] == 0


# --------------------------------------------------------------------------------------------- usage errors


def test_usage_errors_exit_2_and_name_the_place(capsys, tmp_path):
    source = corpus_file("trl/qwen2_5.jinja")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [user("Hi"), assistant("Hey")]}) + "\n\n{not json\n", encoding="utf-8")
    code, out, err = run(capsys, "audit", source, "--data", bad, "--format", "json")
    assert code == 2 and out == "" and f"{bad}:3: invalid JSON" in err
    bad.write_text('{"messages": "hello"}\n', encoding="utf-8")
    code, out, err = run(capsys, "audit", source, "--data", bad)
    assert code == 2 and f"{bad}:1: expected a list of messages" in err
    bad.write_text("[1, 2]\n", encoding="utf-8")
    code, _, err = run(capsys, "audit", source, "--data", bad)
    assert code == 2 and f"{bad}:1: expected a JSON object" in err
    code, _, err = run(capsys, "audit", source, "--data", tmp_path / "missing.jsonl")
    assert code == 2 and "missing.jsonl" in err
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": [user("Hi"), assistant("Hey")]}])
    code, _, err = run(capsys, "audit", tmp_path / "nothing.jinja", "--data", good)
    assert code == 2 and "nothing.jinja" in err
    code, _, err = run(capsys, "audit", source, "--data", good, "--max-length", 10)
    assert code == 2 and "--max-length counts tokens" in err
    code, _, err = run(capsys, "audit", source, "--data", good, "--tokenizer", tmp_path / "no-tokenizer")
    assert code == 2 and "no such tokenizer" in err
    code, _, _ = run(capsys, "audit", source)  # --data is required
    assert code == 2


@pytest.mark.subprocess
def test_json_mode_prints_exactly_one_document_from_the_command(tmp_path):
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [{"messages": [user("Hi"), assistant("Hey", thinking="hmm")]}, {"messages": [user("a"), assistant("b")]}],
    )
    result = subprocess.run(
        [sys.executable, "-m", "templatekit", "audit", str(corpus_file("trl/qwen2_5.jinja")), "--data", str(data)]
        + ["--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)  # one document, nothing before or after it
    assert result.stdout.lstrip().startswith("{") and result.stdout.count('"exit_code"') == 1
    expected = {
        "rows",
        "trained_tokens",
        "rows_without_trained_tokens",
        "rows_truncated",
        "fields_not_rendered",
        "unknown_roles",
        "rejected_conversations",
        "problems",
        "exit_code",
    }
    assert expected <= set(document) and document["exit_code"] == result.returncode


# --------------------------------------------------------------------------------------------- library


def test_library_field_checks_are_capped_and_say_so():
    template = templatekit.get_template("chatml")
    rows = [{"messages": [user(f"q{i}"), assistant(f"a{i}", thinking="t")]} for i in range(5)]
    report = audit_conversations(template, rows, field_check_rows=2)
    assert report.rows == 5 and report.fields_checked["messages[].thinking"] == 2
    assert report.fields_seen["messages[].thinking"] == 5 and report.fields_not_rendered == {"messages[].thinking": 2}
    assert any("checked on the first 2 of 5" in note for note in report.notes)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        audit_conversations(template, rows, max_length=10)


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal for stderr")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_progress_bar_on_a_terminal_only_in_text_mode(tmp_path, fmt):
    import os
    import pty

    rows = [{"messages": [user(f"q{i}"), assistant(f"a{i}")]} for i in range(20)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "templatekit", "audit", str(corpus_file("trl/qwen2_5.jinja")), "--data", str(data)]
    process = subprocess.Popen(
        [*command, "--format", fmt], stdout=subprocess.PIPE, stderr=slave, text=True, cwd=REPO_ROOT
    )
    os.close(slave)
    out, _ = process.communicate(timeout=300)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    err = b"".join(chunks).decode("utf-8", errors="replace")
    assert process.returncode == 0
    if fmt == "json":
        assert err == "" and json.loads(out)["rows"] == 20
    else:
        assert "auditing" in err and "/20" in err
        assert out.startswith(f"{data} against") and "\x1b" not in out  # stdout is a pipe: plain text


# ------------------------------------------------------------------------------------ rows that once crashed


def test_unreadable_rows_are_named_file_and_line_not_a_traceback(capsys, tmp_path):
    """A number of 5,000 digits, a line nested 100,000 deep, a role that is a lone surrogate: exit 2, one line
    naming the file and line (Python raised ValueError, RecursionError, and UnicodeEncodeError on output)."""
    source = corpus_file("trl/qwen2_5.jinja")
    good = json.dumps({"messages": [user("Hi"), assistant("Hey")]})
    lines = {
        "digits": '{"messages": [{"role": "user", "content": "Hi"}], "n": ' + "9" * 5000 + "}",
        "deep": '{"messages": [{"role": "user", "content": ' + "[" * 100_000 + "]" * 100_000 + "}]}",
        "surrogate": '{"messages": [{"role": "\\ud800", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}',
    }
    expected = {
        "digits": "cannot read the JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits",
        "deep": "cannot read the JSON: it nests deeper than Python can read",
        "surrogate": "messages[0].role holds a lone surrogate: not Unicode text",
    }
    for name, line in lines.items():
        data = tmp_path / f"{name}.jsonl"
        data.write_text(good + "\n" + line + "\n", encoding="utf-8")
        code, out, err = run(capsys, "audit", source, "--data", data)
        assert code == 2 and "Traceback" not in err, (name, err)
        assert err.strip().splitlines() == [f"error: {data}:2: {expected[name]}"], (name, err)  # one line


def test_malformed_tool_calls_and_reserved_kwargs_are_reasons_not_tracebacks(capsys, tmp_path):
    """`tool_calls: [null, 1, "x"]` and `tool_calls: "oops"` under a template that ignores them are fields it never
    renders; `chat_template_kwargs: {"messages": []}` is a rejected row that says why (each was a traceback)."""
    rows = [
        {"messages": [user("Hi"), assistant("Hey", tool_calls=[None, 1, "x"])]},
        {"messages": [user("Hi"), assistant("Hey", tool_calls="oops")]},
        {"messages": [user("Hi"), assistant("Hey")], "chat_template_kwargs": {"messages": []}},
        {"messages": [user("Hi"), assistant("Hey")], "chat_template_kwargs": {"tools": 1}},
    ]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    plain = tmp_path / "plain.jinja"  # writes every message's role and content, and nothing else
    plain.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", encoding="utf-8"
    )
    code, document, err = audit_json(capsys, plain, "--data", data)
    assert code == 1 and "Traceback" not in err
    assert document["fields_not_rendered"] == {"messages[].tool_calls": 2}
    assert document["rejected_conversations"] == 2
    assert "chat_template_kwargs sets 'messages', which is not a template switch" in document["first_rejection"]
    for qwen_row in rows[:2]:  # a template that reads the calls rejects the row, with the template's own reason
        code, document, err = audit_json(
            capsys, corpus_file("trl/qwen2_5.jinja"), "--data", write_jsonl(data, [qwen_row])
        )
        assert "Traceback" not in err and document["rejected_conversations"] == 1, document


@pytest.mark.slow
def test_the_field_check_of_a_row_of_100k_messages_is_linear():
    """One row of 100,000 messages: every sentinel found in one scan of the render (it was one scan per message,
    65 s for this row; `benchmarks/audit_scale.py` times it), and each field still checked."""
    messages = [m for i in range(50_000) for m in (user(f"q{i}"), assistant(f"a{i}", thinking="t"))]
    outcome = in_child(
        lambda: audit_conversations(templatekit.get_template("chatml"), [{"messages": messages}]).to_dict(),
        timeout=120,
    )
    assert outcome.kind == "returned", outcome
    document = outcome.value
    assert document["fields_not_rendered"] == {"messages[].thinking": 1}
    assert document["fields_checked"] == {"messages[].content": 1, "messages[].thinking": 1}
