"""The patcher on real templates: corpus coverage, options, already-tagged templates, bad input."""

from __future__ import annotations

import pytest
from _corpus import IDS, TEMPLATES, patched, read, trained_text
from _paths import corpus_dir
from transformers.utils.chat_template_utils import render_jinja_template

import templatekit
from templatekit.core.probes import build_probes
from templatekit.core.syntax import parse_template

# Measured on the corpus (121 of 125 templates): raise it as the patcher improves; a template lost fails the test.
# Refused: two judges, a template with no message loop, and axolotl's DeepSeek V3, whose header after a tool result
# is generated before a call, written inside the loop over the calls (no test there can see the previous message).
VERIFIED_FLOOR = 121


def test_corpus_is_present():
    assert len(TEMPLATES) >= 119, f"expected the corpus templates (hard/ included) under {corpus_dir()}"
    assert any(path.parent.name == "hard" for path in TEMPLATES)


@pytest.mark.corpus
def test_corpus_coverage_and_reasons(corpus):
    """Every corpus template is either verified or refused with readable reasons."""
    verified, refused = 0, {}
    for path in TEMPLATES:
        try:
            result = corpus.patch(path)
        except templatekit.PatchError as error:
            assert error.reasons and all(isinstance(r, str) and r for r in error.reasons), path
            refused[path.name] = error.reasons
            continue
        assert result.report.ok
        verified += 1
    assert verified >= VERIFIED_FLOOR, f"only {verified} verified; refused: {sorted(refused)}"


def test_qwen25_shared_output_is_split_and_guarded():
    original = read("trl/qwen2_5.jinja")
    result = patched("trl/qwen2_5.jinja")
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
    result = patched("trl/qwen2_5.jinja")
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
    tagged = patched("trl/qwen2_5.jinja").template
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
    result = patched("trl/qwen2_5.jinja")
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


def _transformers_render(template: str, probe, *, spans: bool = False):
    """transformers' own renderer (not templatekit's bounded twin of it): (text, spans), or None where it raises."""
    try:
        texts, indices = render_jinja_template(
            conversations=[probe.messages],
            chat_template=template,
            return_assistant_tokens_mask=spans,
            **probe.render_kwargs(),
        )
    except Exception:  # the template rejects this probe
        return None
    return texts[0], [tuple(span) for span in indices[0]] if spans else []


def _sentinel_problems(text: str, spans: list[tuple[int, int]], probe) -> list[str]:
    """What transformers' tracker trains against the probe's sentinels: every assistant sentinel the render holds
    lies inside a trained span, and no other speaker's sentinel touches one."""
    trained = {i for start, end in spans for i in range(start, end)}
    problems = []
    for sentinel in probe.sentinels:
        at = text.find(sentinel.text)
        if at < 0:
            continue  # the template leaves this text out
        places = set(range(at, at + len(sentinel.text)))
        if sentinel.role == "assistant" and not places <= trained:
            problems.append(f"{probe.name}: the assistant's {sentinel.kind} {sentinel.text!r} is not trained")
        if sentinel.role != "assistant" and places & trained:
            problems.append(f"{probe.name}: the {sentinel.role}'s {sentinel.kind} {sentinel.text!r} is trained")
    return problems


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_transformers_own_renderer_agrees_with_each_patch(corpus, path):
    """Invariants 1 and 2 checked without the verifier's code: transformers' own `render_jinja_template` renders
    the patch like the original on every probe the original accepts, and the spans its AssistantTracker reports (the
    ones TRL trains) hold every assistant sentinel and no system, user or tool sentinel."""
    try:
        patched = corpus.patch(path).template
    except templatekit.PatchError as error:
        assert error.reasons  # refused; test_corpus_coverage_and_reasons counts the refusals
        return
    original, checked = corpus.text(path), 0
    for probe in build_probes() + build_probes(blocks=True):
        plain = _transformers_render(original, probe)
        if plain is None:
            continue
        tagged = _transformers_render(patched, probe, spans=True)
        assert tagged is not None, f"{probe.name}: the patch raises where the original renders"
        if tagged[0] != plain[0] and "strftime_now" in original:  # the clock moved on between the two renders
            plain = _transformers_render(original, probe)
        assert tagged[0] == plain[0], probe.name
        assert _sentinel_problems(*tagged, probe) == []
        checked += 1
    assert checked, "the original rejects every probe"
