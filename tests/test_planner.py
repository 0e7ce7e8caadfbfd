"""The planner on small templates, one test per cut and region shape: where `plan_regions` cuts, what it guards, and
what `region_edits` writes there; and `merge_plans`, which writes a part once per setting.

Each template is tiny and written here; the real templates of each shape are in the corpus tests (three of them
here check that the truth is the same with the probes' prompt renders shared).
"""

from __future__ import annotations

import pytest
from _paths import corpus_file

from templatekit.core import traced
from templatekit.core.guards import Guard
from templatekit.core.per_setting import Plan, Variant, merge_plans
from templatekit.core.plan import plan_regions
from templatekit.core.regions import Split
from templatekit.core.rewrite import apply_edits, region_edits
from templatekit.core.traced import analyse
from templatekit.core.verify import merge_adjacent, render_probe
from templatekit.errors import PlanError

PROMPT = "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"


def planned(template: str):
    analysis = analyse(template, ("assistant",), False)
    return analysis, plan_regions(analysis.flow, analysis.traces, lambda layout: layout.trained)


def patched(template: str, guards: dict | None = None) -> str:
    """The template with every region's edits applied, each guarded by the role test where it needs one."""
    analysis, regions = planned(template)
    edits = []
    for region in regions:
        condition = Guard.role_in(next(iter(region.targets)), ["assistant"]) if region.guard else None
        edits += region_edits(analysis.parsed, region, condition)
    return apply_edits(template, edits)


def trained(template: str, messages: list[dict]) -> list[str]:
    """transformers' render of `messages` with `template`: the trained pieces, adjacent spans joined."""
    from templatekit.core.probes import build_probes

    probe = build_probes()[0]
    probe.messages = messages
    rendered = render_probe(template, probe, spans=True)
    return [rendered.text[start:end] for start, end in merge_adjacent(rendered.spans)]


CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]


def test_a_region_of_whole_outputs_is_cut_before_and_after_them():
    template = "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}{{ m.content }}{{ '</s>' }}"
    template += "{% else %}{{ m.content }}{% endif %}{% endfor %}" + PROMPT.replace("<|assistant|>", "<|assistant|>")
    _, regions = planned(template)
    (region,) = regions
    assert (region.start.side, region.end.side) == ("before", "after") and not region.guard
    assert template[region.start.offset : region.end.offset] == "{{ m.content }}{{ '</s>' }}"
    assert trained(patched(template), CHAT) == ["Hey</s>"]


def test_literal_text_is_split_where_the_turn_ends():
    template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}" + PROMPT.replace(
        "'<|assistant|>'", "'<|assistant|>\\n'"
    )
    _, regions = planned(template)
    (region,) = regions
    assert region.end.side == "split" and region.end.operator is None  # inside the data `</s>\n`
    assert region.guard  # the same outputs write the user's turn
    assert "</s>{% endgeneration %}{% else %}" in patched(template)
    assert trained(patched(template), CHAT) == ["Hey</s>"]


def test_an_output_is_split_at_its_plus_operator_and_inside_a_string_literal():
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    _, regions = planned(template)
    (region,) = regions
    start, end = region.start.operator, region.end.operator
    assert isinstance(start, Split) and (start.left, start.right) == ("", "")  # at the `+` before m.content
    assert (end.left, end.right) == ("'<|im_end|>'", "'\\n'")  # inside the literal: the newline stays out
    assert trained(patched(template), CHAT) == ["Hey<|im_end|>"]


def test_a_computed_operand_is_sliced_after_the_header_it_holds():
    template = (
        "{% for m in messages %}{% set text = '<' + m.role + '>' + m.content + '</s>' %}{{ text }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
    )
    _, regions = planned(template)
    (region,) = regions
    assert region.start.operator.headers == ("<assistant>",)
    assert region.start.operator.left == "text[:text.find('<assistant>') + 11]"
    assert trained(patched(template), CHAT) == ["Hey</s>"]


def test_a_slice_that_follows_two_headers_cuts_after_whichever_the_value_holds():
    split = Split(0, 4, operand="text").with_headers(("<a>", "<a><t></t>"))
    assert split.headers == ("<a><t></t>", "<a>")  # longest first
    assert "if '<a><t></t>' in text else" in split.right


def test_a_turn_written_inside_an_if_with_its_stop_after_it_is_cut_into_pieces():
    template = (
        "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}{% if m.content %}{{ m.content }}"
        "{% endif %}{{ '</s>' }}{% else %}{{ m.content }}{% endif %}{% endfor %}" + PROMPT
    )
    _, regions = planned(template)
    # A generation block opens and closes in one statement list: the `if` and the marker after it are two pieces.
    assert [template[r.start.offset : r.end.offset] for r in regions] == [
        "{{ m.content }}",
        "{{ '</s>' }}",
    ]
    assert trained(patched(template), CHAT) == ["Hey</s>"]


def test_parallel_tool_calls_hold_the_loop_statement_whole():
    template = (
        "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}{% if m.tool_calls %}"
        "{% for c in m.tool_calls %}{{ '<call>' + c.function.name + '</call>' }}{% endfor %}{% else %}"
        "{{ m.content }}{% endif %}{{ '</s>' }}{% else %}{{ m.content }}{% endif %}{% endfor %}" + PROMPT
    )
    calls = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": {}}}, {"function": {"name": "g", "arguments": {}}}],
    }
    pieces = trained(patched(template), [CHAT[0], calls])
    assert pieces == ["<call>f</call><call>g</call></s>"]


def test_a_stop_token_written_by_the_next_message_is_guarded_by_the_previous_role():
    # No end marker of its own: the next role token (`<|user|>`) stops the turn, trained only after a reply.
    template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}" + PROMPT
    _, regions = planned(template)
    assert sorted(region.closes for region in regions) == ["", "next"]
    messages = [*CHAT, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    analysis, _ = planned(template)
    from templatekit.core.planning import Goal, plan_patch

    plan, report = plan_patch(analysis, analysis, Goal())
    assert report.ok and "loop.previtem.role in" in plan.text
    assert trained(plan.text, messages) == ["\nHey<|user|>", "\nCiao"]


def test_an_end_of_sequence_written_after_the_loop_closes_the_last_turn():
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{{ eos_token }}" + PROMPT
    _, regions = planned(template)
    assert "after" in {region.closes for region in regions}


def test_guards_write_roles_as_escaped_literals_and_refuse_what_is_not_one_expression():
    guard = Guard.role_in("m", ['bot "one"'])
    assert str(guard) == 'm.role in ["bot \\"one\\""]'
    template = "{% for m in messages %}{% if " + str(guard) + " %}x{% endif %}{% endfor %}"
    assert trained(template, [{"role": 'bot "one"', "content": ""}]) == []  # renders: the test parsed and ran
    with pytest.raises(PlanError):
        Guard.role_in("m.x", ["a"])  # not a variable name
    with pytest.raises(PlanError):
        Guard.of_template("a %} {{ b")


def test_merge_plans_writes_only_the_part_that_differs_once_per_setting():
    template = (
        "{% for m in messages %}{{ '<' + m.role + '>' }}{{ m.content }}{{ '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% if not think %}{{ '<t></t>' }}{% endif %}{% endif %}"
    )
    analysis, _ = planned(template)
    content = template.index("{{ m.content }}")
    stop = template.index("{{ '</s>' }}")
    end = stop + len("{{ '</s>' }}")
    from templatekit.core.regions import Edit

    shared = (Edit(stop, stop, "{% generation %}"), Edit(end, end, "{% endgeneration %}"))
    base = Plan(template, ((Edit(content, content, "{% generation %}"), Edit(stop, stop, "{% endgeneration %}")),))
    other = Plan(template, (shared,))
    merged = merge_plans(analysis.parsed, analysis.flow, base, [Variant(Guard.of_template("think"), other)])
    # The two outputs whose tags differ are written once per setting, under one test; the rest is shared.
    assert merged.count("{% if think %}") == 1 and merged.count("{% else %}") == 1
    assert merged.startswith(
        "{% for m in messages %}{{ '<' + m.role + '>' }}{% if think %}{{ m.content }}{% generation"
    )
    for think in (True, False):
        probe_messages = [{"role": "user", "content": "Hi"}]
        assert (
            render_probe(merged, _probe(probe_messages, think)).text
            == render_probe(template, _probe(probe_messages, think)).text
        )


def _probe(messages: list[dict], think: bool):
    from templatekit.core.probes import build_probes

    probe = build_probes()[0]
    probe.messages, probe.template_kwargs = messages, {"think": think}
    return probe


@pytest.mark.parametrize("name", ["trl/qwen2_5.jinja", "trl/llama3_2.jinja", "hard/llama.cpp__Kimi-K3.jinja"])
def test_the_truth_is_the_same_with_the_probes_prompt_renders_shared(name, monkeypatch):
    """The probes share their first messages, and the two content shapes share some conversations, so each trace is
    made once per analysis and shared (`traced._traced`: the probes' renders, their prompts' and prefixes'); the
    layouts must be those of every render traced afresh."""
    template = corpus_file(name).read_text(encoding="utf-8")
    calls = {"shared": 0, "afresh": 0}
    real_trace, real_traced = traced.Tracer.trace, traced._traced

    def layouts(mode: str) -> dict:
        def counted(self, *args, **kwargs):
            calls[mode] += 1
            return real_trace(self, *args, **kwargs)

        monkeypatch.setattr(traced.Tracer, "trace", counted)
        if mode == "afresh":
            monkeypatch.setattr(traced, "_traced", lambda tracer, kept, *call: real_traced(tracer, {}, *call))
        found = analyse(template, ("assistant",), False)
        return {
            t.probe.name: (t.layout.text, t.layout.turns, t.layout.forbidden, t.layout.header) for t in found.traces
        }

    shared = layouts("shared")
    assert shared == layouts("afresh") and shared
    assert calls["shared"] < calls["afresh"]  # renders were shared
