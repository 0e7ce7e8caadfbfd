"""The patcher on real templates: corpus coverage, options, already-tagged templates, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

import templatekit
from templatekit.core.probes import build_probes
from templatekit.core.syntax import parse_template
from templatekit.core.verify import merge_adjacent, render_probe

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
TEMPLATES = sorted(CORPUS.glob("*/*.jinja"))


def read(name: str) -> str:
    return (CORPUS / name).read_text(encoding="utf-8")


def trained_text(template: str, messages: list[dict], **kwargs) -> tuple[str, list[str]]:
    """Render with transformers and return the text and the trained pieces (adjacent spans joined)."""
    probe = build_probes()[0]
    probe.messages = messages
    probe.tools = kwargs.pop("tools", None)
    probe.add_generation_prompt = kwargs.pop("add_generation_prompt", False)
    assert not kwargs, f"unknown options {sorted(kwargs)}"
    rendered = render_probe(template, probe, spans=True)
    assert rendered.error is None, rendered.error
    return rendered.text, [rendered.text[s:e] for s, e in merge_adjacent(rendered.spans)]


def test_corpus_is_present():
    assert len(TEMPLATES) >= 119 and any(path.parent.name == "hard" for path in TEMPLATES)


def test_corpus_coverage_and_reasons():
    """Every corpus template is either verified or refused with readable reasons."""
    verified, refused = 0, {}
    for path in TEMPLATES:
        try:
            result = templatekit.patch_template(path.read_text(encoding="utf-8"))
        except templatekit.PatchError as error:
            assert error.reasons and all(isinstance(r, str) and r for r in error.reasons), path
            refused[path.name] = error.reasons
            continue
        assert result.report.ok
        verified += 1
    # The floor is the current measured figure; raise it as the patcher improves.
    assert verified >= 122, f"only {verified} verified; refused: {sorted(refused)}"


def test_qwen25_shared_output_is_split_and_guarded():
    original = read("trl/qwen2_5.jinja")
    result = templatekit.patch_template(original)
    assert "{% generation %}" in result.template
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "ANSWER ONE"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ANSWER TWO"},
    ]
    text, trained = trained_text(result.template, messages)
    assert trained == ["ANSWER ONE<|im_end|>", "ANSWER TWO<|im_end|>"]
    plain, _ = trained_text(original, messages)
    assert text == plain


def test_tool_calls_are_trained_with_their_framing():
    result = templatekit.patch_template(read("trl/qwen2_5.jinja"))
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": "CALLARG"}}}],
        },
        {"role": "tool", "content": "TOOLOUT"},
        {"role": "assistant", "content": "DONE"},
    ]
    text, trained = trained_text(result.template, messages)
    assert any("CALLARG" in piece and piece.strip().startswith("<tool_call>") for piece in trained)
    assert not any("TOOLOUT" in piece or "weather" in piece for piece in trained)
    assert trained[-1] == "DONE<|im_end|>"


def test_custom_role_in_llama31_template():
    role = "justice_william_h_rehnquist"
    result = templatekit.patch_template(read("trl/llama3_1.jinja"), train_roles=(role,))
    messages = [
        {"role": "user", "content": "Counsel argues."},
        {"role": role, "content": "The Court asks a question."},
        {"role": "user", "content": "Counsel answers."},
        {"role": "assistant", "content": "Not trained."},
    ]
    text, trained = trained_text(result.template, messages)
    assert trained == ["The Court asks a question.<|eot_id|>"]


def test_only_last_turn():
    result = templatekit.patch_template(read("trl/qwen2_5.jinja"), only_last_turn=True)
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "FIRST"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "LAST"},
    ]
    _, trained = trained_text(result.template, messages)
    assert trained == ["LAST<|im_end|>"]


def test_already_tagged_template_is_verified_and_kept():
    tagged = templatekit.patch_template(read("trl/qwen2_5.jinja")).template
    again = templatekit.patch_template(tagged)
    assert again.status == "already_tagged" and again.template == tagged
    assert templatekit.check_template(tagged).ok


def test_wrong_tags_are_replaced_by_default_and_refused_with_keep_tags():
    original = read("unsloth/chatml.jinja")
    # Tags around the whole loop train user text too.
    wrong = "{% generation %}" + original + "{% endgeneration %}"
    assert not templatekit.check_template(wrong).ok
    fixed = templatekit.patch_template(wrong)
    assert fixed.status == "retagged" and templatekit.check_template(fixed.template).ok
    assert "were replaced" in fixed.report.notes[0]
    with pytest.raises(templatekit.PatchError) as error:
        templatekit.patch_template(wrong, retag=False)
    assert "retag=False" in error.value.reasons[0]


def test_check_untagged_template_names_the_problem():
    report = templatekit.check_template(read("trl/qwen2_5.jinja"))
    assert not report.ok and "no {% generation %} tags" in report.reasons[0]


def test_diff_is_minimal():
    original = read("trl/qwen2_5.jinja")
    result = templatekit.patch_template(original)
    removed = [line for line in result.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert 1 <= len(removed) <= 4
    assert result.template.replace("{% generation %}", "").count("\n") >= original.count("\n")


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [("{{ a + }}", 1, 8), ("hello\n  {{ a b }}", 2, 8), ("{% for %}", 1, 8)],
)
def test_malformed_jinja_names_line_and_column(source, line, column):
    with pytest.raises(templatekit.TemplateSourceError) as error:
        templatekit.patch_template(source)
    assert (error.value.line, error.value.column) == (line, column)
    assert f":{line}:{column}:" in str(error.value)


def test_unclosed_block_points_at_the_end():
    with pytest.raises(templatekit.TemplateSourceError) as error:
        templatekit.patch_template("{% if x %}\nabc")
    assert error.value.line == 2 and "endif" in error.value.message


def test_empty_template():
    with pytest.raises(templatekit.TemplateSourceError, match="empty"):
        templatekit.patch_template("   \n")


def test_template_without_message_loop():
    with pytest.raises(templatekit.PatchError) as error:
        templatekit.patch_template("{{ bos_token }}Hello, world.")
    assert "no trained message is rendered" in error.value.reasons[0]


def test_sandbox_escape_is_refused_before_rendering():
    with pytest.raises(templatekit.TemplateSourceError) as error:
        templatekit.patch_template("{% for m in messages %}{{ ''.__class__.__mro__ }}{{ m.content }}{% endfor %}")
    assert "__class__" in str(error.value) or "__mro__" in str(error.value)
    assert error.value.line == 1


def test_offsets_survive_parsing():
    source = "{%- for m in messages %}\n  {{- m.role + ':' + m.content }}\n{% endfor %}"
    parsed = parse_template(source)
    loop = parsed.ast.body[0]
    assert source[loop.lineno.offset : loop.lineno.offset + 3] == "for"
    add = loop.body[0].nodes[0]
    assert source[add.right.lineno.offset :].startswith("m.content") or source[
        add.right.node.lineno.offset :
    ].startswith("m.content")


def test_patched_templates_render_like_the_originals():
    """Invariant 1 on a sample: every probe renders byte-identical through transformers."""
    checked = 0
    for path in TEMPLATES[::5]:
        original = path.read_text(encoding="utf-8")
        try:
            result = templatekit.patch_template(original, retag=True)
        except templatekit.PatchError:
            continue
        for probe in build_probes():
            before, after = render_probe(original, probe), render_probe(result.template, probe)
            assert before.text == after.text, (path, probe.name)
        checked += 1
    assert checked >= 10
