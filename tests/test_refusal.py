"""Refusals a user can act on: the kind of problem and where, at most three grouped reasons in the user's words,
and what to do, in at most five lines; every reason with --explain."""

from __future__ import annotations

import re

import pytest
from _cli import run
from _paths import corpus_file

import templatekit
from templatekit.core.refusal import explain

#: The probes' stand-in texts: none may reach a user without --explain.
STAND_IN = re.compile(r"\btk[a-z]+\d+[a-h]?q+\b")

#: Templates refused as they are, and templates refused for a role they do not generate (`--train-role user`):
#: judges, a template without a message loop, headers and other speakers' text that a user turn cannot train.
REFUSED = [
    ("hard/gpt4all__models3-Wizard_v1.2.jinja", ()),
    ("hard/hf__nvidia-Qwen3-Nemotron-235B-A22B-GenRM-2603.jinja", ()),
    ("hard/hfjs-ollama-automap__shieldgemma-27b.jinja", ()),
    ("trl/llama3.jinja", ("--train-role", "user")),
    ("axolotl/chatml.jinja", ("--train-role", "user")),
    ("axolotl/phi_4.jinja", ("--train-role", "user")),
    ("axolotl/qwen2_vl.jinja", ("--train-role", "user")),
    ("axolotl/alpaca.jinja", ("--train-role", "user")),
    ("hard/hf__zai-org-glm-4-9b-chat.jinja", ("--train-role", "user")),
    ("unsloth/llama-3.jinja", ("--train-role", "user")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), REFUSED, ids=[name for name, _ in REFUSED])
def test_a_refusal_is_five_lines_that_say_what_to_do(capsys, tmp_path, name, options):
    path = corpus_file(name)
    code, out, err = run(capsys, "patch", path, *options, "-o", tmp_path / "out.jinja")
    lines = err.splitlines()
    assert code == 1 and not out and not (tmp_path / "out.jinja").exists()
    assert 3 <= len(lines) <= 5, err
    assert lines[0].startswith(f"{path}: cannot patch, nothing written: ")
    assert lines[-1].startswith("  what to do: ")
    assert not STAND_IN.search(err), err
    assert "probe '" not in err
    code, _, every = run(capsys, "patch", path, *options, "--explain", "-o", tmp_path / "out.jinja")
    try:
        reasons = templatekit.patch_template(
            path.read_text(encoding="utf-8"), train_roles=options[1:] or ("assistant",)
        )
    except templatekit.PatchError as error:
        reasons = error.reasons
    assert code == 1
    assert all(f"  - {reason}" in every for reason in reasons)  # --explain: every reason, as written


def test_reasons_that_differ_only_in_their_render_are_one_line_with_a_count():
    reasons = [
        "probe 'single_turn': message 1: the header '<|user|>' is trained",
        "probe 'multi_turn': message 3: the header '<|user|>' is trained",
        "probe 'tool_call': message 1: 'tkusercon2q<|end|>' after the end of the turn is trained",
    ]
    refusal = explain(reasons, "{% for m in messages %}<|user|>{{ m.content }}<|end|>{% endfor %}")
    assert refusal.reasons == (
        ("the header '<|user|>' is trained", 2),
        ("'{user content}<|end|>' after the end of the turn is trained", 1),
    )
    assert refusal.kind == "the tags would train text the model does not generate"
    assert refusal.where == (1, 24)  # where the template writes the quoted header
    assert "--fallback" in refusal.advice
    assert len(refusal.lines(explain=True)) == len(reasons) + 1


def test_a_setting_names_the_switch_where_the_template_reads_it_and_how_to_patch_for_it():
    template = "{% for m in messages %}{{ m.content }}{% endfor %}\n{% if enable_thinking %}<think>{% endif %}"
    refusal = explain(
        ["with enable_thinking=False: probe 'single_turn': message 1: '<think>' is not trained"], template
    )
    assert refusal.kind.startswith("under enable_thinking=False: ")
    assert refusal.where == (2, 7)
    assert "--template-kwarg enable_thinking=false" in refusal.advice


def test_more_groups_than_shown_point_to_explain():
    reasons = [f"probe 'p{i}': message 1: the header 'H{i}xx' is trained" for i in range(5)]
    lines = explain(reasons).lines()
    assert len(lines) == 4 and lines[2].endswith("; 2 more: --explain lists them")


def test_check_groups_the_findings_of_tags_that_fail(capsys, tmp_path):
    # Tags around the user's text too: every render shows the header trained.
    tagged = (
        "{% for m in messages %}{% generation %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endgeneration %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    path = tmp_path / "t.jinja"
    path.write_text(tagged, encoding="utf-8")
    code, out, _ = run(capsys, "check", path)
    assert code == 1
    assert len([line for line in out.splitlines() if line.startswith("  - ")]) <= 3
    assert "what to do: `templatekit patch SOURCE`" in out and not STAND_IN.search(out)
    code, every, _ = run(capsys, "check", "--explain", path)
    assert code == 1 and STAND_IN.search(every)  # the verifier's own words, stand-ins included
