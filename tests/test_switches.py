"""Template switches (`enable_thinking`, `thinking`, `reasoning_effort`, ...): found with their values, and one
patched template verified under every setting of them.

A switch can move a turn's edge: Qwen3 with `enable_thinking=False` writes the empty think block into the
generation prompt, so it is no longer generated there. TRL renders each row with its own setting, so the one
template must train the right text under each.
"""

from __future__ import annotations

import warnings

import pytest
import tokenizers_offline
from _corpus import patched
from _paths import corpus_file
from tokenizers_offline import with_chat_template

from templatekit import patch_template, prepare_dataset, render_with_spans
from templatekit.core.switches import settings, switch_values, template_switches
from templatekit.core.syntax import parse_template
from templatekit.errors import ConversationError
from templatekit.training.spans import SpanRenderer

CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]


def switches(name: str) -> list[str]:
    return template_switches(parse_template(corpus_file(name).read_text(encoding="utf-8")).ast)


def test_switches_are_the_names_a_template_tests_and_only_defaults():
    assert switches("trl/qwen3.jinja") == ["enable_thinking"]
    assert "thinking" in switches("hard/llama.cpp__Kimi-K3.jinja")  # defaulted by `{% set thinking = true %}`
    # Llama 3.1 iterates `custom_tools` and writes `date_string`: inputs, not switches.
    assert switches("trl/llama3_1.jinja") == ["tools_in_user_message"]
    assert switches("trl/qwen2_5.jinja") == []


def test_switch_values_are_booleans_and_the_strings_they_are_compared_with():
    kimi = parse_template(corpus_file("hard/llama.cpp__Kimi-K3.jinja").read_text(encoding="utf-8")).ast
    assert switch_values(kimi, "thinking") == [True, False]
    assert {"required", "none"} <= set(switch_values(kimi, "tool_choice"))
    # `{% set enable_thinking = enable_thinking | default(false) %}` defaults a switch: it stays one.
    assert "enable_thinking" in switches("hard/hf__google-gemma-4-26B-A4B-it.jinja")
    names = [setting.name for setting in settings(parse_template("{% if effort == 'high' %}x{% endif %}").ast)]
    assert names == ["default", "effort='high'"]


SWITCHED = [
    "trl/qwen3.jinja",
    "trl/qwen3_8.jinja",
    "trl/glm4moe.jinja",
    "axolotl/exaone4.jinja",
    "hard/llama.cpp__Kimi-K3.jinja",
    "hard/hf__google-gemma-4-26B-A4B-it.jinja",
    "trl/nemotron_3_super.jinja",
    "hard/alignment-handbook__smollm3_sft_sft.jinja",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SWITCHED)
def test_one_patch_is_verified_under_every_setting_of_every_switch(name):
    # Each of these trained the wrong text under some setting when patched for the default only.
    source = corpus_file(name).read_text(encoding="utf-8")
    report = patched(name).report
    expected = [s.name for s in settings(parse_template(source).ast)]
    assert report.ok and not report.switch_problems
    assert set(report.settings) | set(_rejected(report)) == set(expected)
    assert any(note.startswith("verified under every setting of its switches") for note in report.notes)


def _rejected(report) -> list[str]:
    notes = [note for note in report.notes if note.startswith("settings the template rejects")]
    return notes[0].split(": ", 1)[1].split(", ") if notes else []


def test_where_the_tags_sit_differently_the_part_is_written_per_setting_under_the_templates_own_test():
    source = corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8")
    result = patched("trl/qwen3.jinja")
    # Qwen3's own test of the switch, from its generation prompt, now also chooses where the turn opens.
    own_test = "{%- if enable_thinking is defined and enable_thinking is false %}"
    assert own_test in source and result.template.count(own_test) == source.count(own_test) + 1
    assert any("written once per setting" in note for note in result.report.notes)


@pytest.mark.slow
@pytest.mark.parametrize("setting", [{"enable_thinking": False}, {"enable_thinking": True}])
def test_a_fixed_setting_is_verified_with_the_other_switches_open(setting):
    source = corpus_file("trl/qwen3_8.jinja").read_text(encoding="utf-8")
    result = patch_template(source, template_kwargs=setting)
    assert result.report.ok
    assert f"verified for data rendered with template_kwargs={setting!r}" in result.report.notes
    assert all("enable_thinking" not in name or name == "default" for name in result.report.settings)
    assert any("preserve_thinking=False" in name for name in result.report.settings)


@pytest.fixture(scope="module")
def qwen3():
    tokenizer = with_chat_template(
        tokenizers_offline.qwen_tokenizer(qwen3=True), corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8")
    )
    return tokenizer


def trained_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([token for token, bit in zip(ids, mask) if bit])


def test_transformers_masks_follow_the_switch_with_one_patched_template(qwen3):
    # transformers' own tracker, on the one template patched once, under each setting a TRL row may carry.
    tagged = patch_template(qwen3.chat_template).template
    for thinking, expected in ((False, "It is 4.<|im_end|>"), (True, "<think>\n\n</think>\n\nIt is 4.<|im_end|>")):
        out = qwen3.apply_chat_template(
            CHAT,
            chat_template=tagged,
            enable_thinking=thinking,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert trained_text(qwen3, out["input_ids"], out["assistant_masks"]) == expected


def test_render_with_spans_follows_the_switch_it_renders_with(qwen3):
    text, spans = render_with_spans(qwen3.chat_template, CHAT, enable_thinking=False)
    assert "<think>\n\n</think>\n\n" in text
    assert [text[start:end] for start, end in spans] == ["It is 4.<|im_end|>"]
    text, spans = render_with_spans(qwen3.chat_template, CHAT, enable_thinking=True)
    assert [text[start:end] for start, end in spans] == ["<think>\n\n</think>\n\nIt is 4.<|im_end|>"]


def test_a_renderer_refuses_a_setting_other_than_the_one_it_fixed(qwen3):
    renderer = SpanRenderer(qwen3.chat_template)
    assert renderer.render(CHAT, enable_thinking=False)[1] and renderer.render(CHAT, enable_thinking=True)[1]
    fixed = SpanRenderer(qwen3.chat_template, template_kwargs={"enable_thinking": False})
    assert fixed.render(CHAT, enable_thinking=False)[1]
    with pytest.raises(ConversationError, match="verified for template_kwargs=.'enable_thinking': False. only"):
        fixed.render(CHAT, enable_thinking=True)


def test_prepare_dataset_renders_and_masks_with_the_given_switch(qwen3):
    import datasets

    data = datasets.Dataset.from_list([{"messages": CHAT}])
    plain = prepare_dataset(data, qwen3, progress=False)
    switched = prepare_dataset(data, qwen3, progress=False, template_kwargs={"enable_thinking": False})
    assert trained_text(qwen3, plain[0]["input_ids"], plain[0]["assistant_masks"]).startswith("<think>")
    assert trained_text(qwen3, switched[0]["input_ids"], switched[0]["assistant_masks"]) == "It is 4.<|im_end|>"
    expected = qwen3.apply_chat_template(CHAT, enable_thinking=False, tokenize=True, return_dict=True)["input_ids"]
    assert switched[0]["input_ids"] == expected


@pytest.mark.slow
def test_the_cli_patches_once_and_checks_every_setting(tmp_path, capsys):
    from templatekit import cli

    source = tmp_path / "qwen3.jinja"
    source.write_text(corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    target = tmp_path / "qwen3_tagged.jinja"
    assert cli.main(["patch", str(source), "-o", str(target)]) == 0
    capsys.readouterr()
    assert cli.main(["check", str(target)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "enable_thinking=False" in out and "enable_thinking=True" in out
    # A template tagged for the default only (the think block always trained) fails the other setting, by name.
    default_only = tmp_path / "default_only.jinja"
    default_only.write_text(
        patch_template(source.read_text(encoding="utf-8"), template_kwargs={"enable_thinking": True}).template,
        encoding="utf-8",
    )
    assert cli.main(["check", str(default_only)]) == 1
    assert "with enable_thinking=False" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["patch", str(source), "--template-kwarg", "enable_thinking"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_prepare_dataset_reads_trls_per_row_chat_template_kwargs(qwen3):
    import datasets

    rows = [
        {"messages": CHAT, "chat_template_kwargs": {"enable_thinking": False}},
        {"messages": CHAT, "chat_template_kwargs": {}},  # Arrow writes the missing key as None: left unset
        {"messages": CHAT, "chat_template_kwargs": {"enable_thinking": True}},
    ]
    prepared = prepare_dataset(datasets.Dataset.from_list(rows), qwen3, progress=False)
    trained = [trained_text(qwen3, row["input_ids"], row["assistant_masks"]) for row in prepared]
    assert trained == ["It is 4.<|im_end|>"] + ["<think>\n\n</think>\n\nIt is 4.<|im_end|>"] * 2
    for row, source in zip(prepared, rows):
        settings = {k: v for k, v in source["chat_template_kwargs"].items() if v is not None}
        expected = qwen3.apply_chat_template(CHAT, tokenize=True, return_dict=True, **settings)["input_ids"]
        assert row["input_ids"] == expected


def test_patch_tokenizer_serves_rows_of_every_setting(qwen3):
    from templatekit.integrations.trl import patch_tokenizer

    tokenizer = with_chat_template(qwen3, qwen3.chat_template)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch_tokenizer(tokenizer)
    for thinking, expected in ((False, "It is 4.<|im_end|>"), (True, "<think>\n\n</think>\n\nIt is 4.<|im_end|>")):
        out = tokenizer.apply_chat_template(
            CHAT, enable_thinking=thinking, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert trained_text(tokenizer, out["input_ids"], out["assistant_masks"]) == expected


def test_audit_renders_each_row_with_its_own_switches(qwen3, tmp_path, capsys):
    import json

    from templatekit import audit_conversations, cli

    rows = [
        {"messages": CHAT, "chat_template_kwargs": {"enable_thinking": False}},
        {"messages": CHAT},
    ]
    report = audit_conversations(qwen3.chat_template, rows, tokenizer=qwen3)
    think_block = len(qwen3("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    assert report.trained[1] - report.trained[0] == think_block  # the first row's block is prompt, not trained
    fixed = audit_conversations(
        qwen3.chat_template, rows[1:], tokenizer=qwen3, template_kwargs={"enable_thinking": False}
    )
    assert fixed.trained == report.trained[:1]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows[1:]), encoding="utf-8")
    template = tmp_path / "qwen3.jinja"
    template.write_text(qwen3.chat_template, encoding="utf-8")
    argv = ["audit", str(template), "--data", str(data), "--format", "json"]
    assert cli.main([*argv, "--template-kwarg", "enable_thinking=false"]) == 0
    document = json.loads(capsys.readouterr().out)  # no tokenizer beside the file: characters are counted
    assert document["unit"] == "characters" and document["trained_tokens"]["max"] == len("It is 4.<|im_end|>")


@pytest.mark.slow
def test_show_marks_what_trains_under_a_switch(tmp_path, capsys):
    import json

    from templatekit import cli

    template = tmp_path / "qwen3.jinja"
    template.write_text(corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    conversation = tmp_path / "chat.json"
    conversation.write_text(json.dumps(CHAT), encoding="utf-8")
    argv = ["show", str(template), "--messages", str(conversation)]
    assert cli.main([*argv, "--template-kwarg", "enable_thinking=false"]) == 0
    assert "</think>\n\n⟦It is 4.<|im_end|>⟧" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "⟦<think>\n\n</think>\n\nIt is 4.<|im_end|>⟧" in capsys.readouterr().out
