"""Template switches (`enable_thinking`, `thinking`, ...): found, checked both ways, and patched for when given.

A switch can move a turn's edge: Qwen3 with `enable_thinking=False` writes the empty think block into the
generation prompt, so it is no longer generated. The tags verified with the switch unset would train it.
"""

from __future__ import annotations

import warnings

import pytest
import tokenizers_offline
from _corpus import patched
from _paths import corpus_file
from tokenizers_offline import with_chat_template

from templatekit import patch_template, prepare_dataset, render_with_spans
from templatekit.core.switches import template_switches
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


def test_the_default_patch_names_the_settings_it_does_not_hold_for():
    report = patched("trl/qwen3.jinja").report
    assert report.ok
    assert list(report.switch_problems) == ["enable_thinking=False"]
    assert "'<think>\\n\\n</think>\\n\\n' is trained" in report.switch_problems["enable_thinking=False"][0]
    assert any("template_kwargs={'enable_thinking': False}" in note for note in report.notes)
    assert "also verified with enable_thinking=True" in report.notes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("trl/qwen3.jinja", {"enable_thinking": False}),
        ("trl/qwen3_8.jinja", {"preserve_thinking": False}),
        ("trl/glm4moe.jinja", {"enable_thinking": False}),
        ("axolotl/exaone4.jinja", {"enable_thinking": True}),
        ("hard/llama.cpp__Kimi-K3.jinja", {"thinking": False}),
    ],
)
def test_a_setting_the_default_patch_fails_is_patched_and_verified_when_given(name, setting):
    source = corpus_file(name).read_text(encoding="utf-8")
    ((key, value),) = setting.items()
    assert f"{key}={value}" in patched(name).report.switch_problems
    result = patch_template(source, template_kwargs=setting)
    assert result.report.ok and f"{key}={value}" not in result.report.switch_problems
    assert f"verified for data rendered with template_kwargs={setting!r}" in result.report.notes


@pytest.fixture(scope="module")
def qwen3():
    tokenizer = with_chat_template(
        tokenizers_offline.qwen_tokenizer(qwen3=True), corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8")
    )
    return tokenizer


def trained_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([token for token, bit in zip(ids, mask) if bit])


def test_transformers_masks_follow_the_switch_the_tags_were_planned_for(qwen3):
    for thinking, expected in ((False, "It is 4.<|im_end|>"), (True, "<think>\n\n</think>\n\nIt is 4.<|im_end|>")):
        tagged = patch_template(qwen3.chat_template, template_kwargs={"enable_thinking": thinking}).template
        out = qwen3.apply_chat_template(
            CHAT,
            chat_template=tagged,
            enable_thinking=thinking,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert trained_text(qwen3, out["input_ids"], out["assistant_masks"]) == expected


def test_render_with_spans_plans_for_the_switch_it_renders_with(qwen3):
    text, spans = render_with_spans(qwen3.chat_template, CHAT, enable_thinking=False)
    assert "<think>\n\n</think>\n\n" in text
    assert [text[start:end] for start, end in spans] == ["It is 4.<|im_end|>"]


def test_a_renderer_refuses_a_switch_its_tags_do_not_hold_for(qwen3):
    renderer = SpanRenderer(qwen3.chat_template)
    with pytest.raises(ConversationError, match=r"template_kwargs=\{'enable_thinking': False\}"):
        renderer.render(CHAT, enable_thinking=False)
    assert renderer.render(CHAT, enable_thinking=True)[1]  # a setting the tags hold for renders
    planned = SpanRenderer(qwen3.chat_template, template_kwargs={"enable_thinking": False})
    assert planned.render(CHAT, enable_thinking=False)[1]
    with pytest.raises(ConversationError, match="planned for template_kwargs=.'enable_thinking': False"):
        planned.render(CHAT, enable_thinking=True)  # the tags were planned for the other setting


def test_prepare_dataset_renders_and_masks_with_the_given_switch(qwen3):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list([{"messages": CHAT}])
    plain = prepare_dataset(data, qwen3, progress=False)
    switched = prepare_dataset(data, qwen3, progress=False, template_kwargs={"enable_thinking": False})
    assert trained_text(qwen3, plain[0]["input_ids"], plain[0]["assistant_masks"]).startswith("<think>")
    assert trained_text(qwen3, switched[0]["input_ids"], switched[0]["assistant_masks"]) == "It is 4.<|im_end|>"
    expected = qwen3.apply_chat_template(CHAT, enable_thinking=False, tokenize=True, return_dict=True)["input_ids"]
    assert switched[0]["input_ids"] == expected


@pytest.mark.slow
def test_the_cli_patches_and_checks_for_a_switch(tmp_path, capsys):
    from templatekit import cli

    source = tmp_path / "qwen3.jinja"
    source.write_text(corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    target = tmp_path / "qwen3_no_thinking.jinja"
    assert cli.main(["patch", str(source), "-o", str(target), "--template-kwarg", "enable_thinking=false"]) == 0
    assert "template_kwargs={'enable_thinking': False}" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["check", str(target), "--template-kwarg", "enable_thinking=false"]) == 0
    capsys.readouterr()
    # Checked for the default setting, the same tags fail: the think block is generated there.
    assert cli.main(["check", str(target)]) == 1
    assert "'<think>\\n\\n</think>\\n…istcon1q<|im_end|>' trained" in " ".join(capsys.readouterr().out.split())
    # The default patch's check names the setting it does not hold for.
    default = tmp_path / "qwen3_default.jinja"
    assert cli.main(["patch", str(source), "-o", str(default)]) == 0
    capsys.readouterr()
    assert cli.main(["check", str(default)]) == 0
    assert "with enable_thinking=False the tags train the wrong text" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["patch", str(source), "--template-kwarg", "enable_thinking"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_prepare_dataset_reads_trls_per_row_chat_template_kwargs(qwen3):
    datasets = pytest.importorskip("datasets")
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


def test_patch_tokenizer_warns_of_a_setting_its_tags_do_not_hold_for(qwen3):
    from templatekit.errors import TemplateSwitchWarning
    from templatekit.integrations.trl import patch_tokenizer

    with pytest.warns(TemplateSwitchWarning, match=r"enable_thinking=False .*template_kwargs=\{'enable_thinking'"):
        patch_tokenizer(with_chat_template(qwen3, qwen3.chat_template))
    tokenizer = with_chat_template(qwen3, qwen3.chat_template)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemplateSwitchWarning)
        patch_tokenizer(tokenizer, template_kwargs={"enable_thinking": False})
    out = tokenizer.apply_chat_template(
        CHAT, enable_thinking=False, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert trained_text(tokenizer, out["input_ids"], out["assistant_masks"]) == "It is 4.<|im_end|>"


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
