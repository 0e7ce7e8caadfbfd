"""The hard shapes real templates take, each on the corpus template that has it.

Every test patches the real template, renders a realistic conversation through transformers with the patched
template, and checks the rendering is unchanged and exactly the assistant's generated text is trained.
"""

from __future__ import annotations

import pytest
from _corpus import TOOLS, patched, patched_and_original

WEATHER_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}


def test_llama3_content_built_in_a_variable_is_sliced_at_the_call_site():
    # `{% set content = header + message['content'] | trim + '<|eot_id|>' %}`, a BOS prefix on the first
    # message, then `{{ content }}`: the output is split where the header ends, found by its text.
    messages = [
        {"role": "assistant", "content": "  Opening line.  "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    for name in ("trl/llama3.jinja", "axolotl/llama3.jinja"):
        trained, text = patched_and_original(name, messages)
        assert trained == ["Opening line.<|eot_id|>", "Hello!<|eot_id|>"], name
        assert text.startswith("<s><|start_header_id|>assistant")


@pytest.mark.slow
def test_gemma4_tool_result_inside_the_model_turn_stays_untrained():
    # Gemma 4 writes the tool's result inside the model's turn, between the call and the reply, and sets
    # variables between them that are read later (a generation block would hide them).
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        WEATHER_CALL,
        {"role": "tool", "name": "get_weather", "content": "RAINY-RESULT"},
        {"role": "assistant", "content": "It rains."},
    ]
    trained, text = patched_and_original("trl/gemma4.jinja", messages, tools=TOOLS)
    joined = "".join(trained)
    assert "RAINY-RESULT" in text and "RAINY-RESULT" not in joined
    assert "Paris" in joined and "It rains." in joined
    assert "Weather in Paris?" not in joined


def test_exaone_message_held_in_a_variable_of_a_range_loop():
    # `{% for i in range(messages | length) %}{% set msg = messages[i] %}`: the message is found through `msg`.
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    trained, _ = patched_and_original("axolotl/exaone4.jinja", messages)
    assert [piece.rstrip() for piece in trained] == ["Hello there.[|endofturn|]", "Goodbye.[|endofturn|]"]


def test_template_that_reads_only_content_blocks():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]
    trained, _ = patched_and_original("trl/idefics3.jinja", messages)
    # The prompt ends with "Assistant:"; the space after it is the model's first generated character.
    assert trained == [" A cat.<end_of_utterance>"]


def test_header_inferred_when_the_generation_prompt_writes_nothing():
    # Command A's tool-use template always ends with the chatbot header, so add_generation_prompt adds
    # nothing; the header is what every assistant turn opens with.
    messages = [{"role": "user", "content": "Weather in Paris?"}, WEATHER_CALL]
    trained, text = patched_and_original("axolotl/command_a_tool_use.jinja", messages, tools=TOOLS)
    joined = "".join(trained)
    assert joined.startswith("<|START_THINKING|>") and "Paris" in joined
    assert "<|CHATBOT_TOKEN|>" not in joined and "Weather in Paris?" not in joined


def test_report_names_the_stop_marker_and_where_it_is_written():
    # GLM-4 ends an assistant turn with the next message's role token; Qwen2.5 with its own <|im_end|>.
    notes = patched("trl/glm4moe.jinja").report.notes
    assert any("'<|user|>', a role token written right after the turn" in note for note in notes), notes
    notes = patched("trl/qwen2_5.jinja").report.notes
    assert "the turn ends with '<|im_end|>', written by the turn itself" in notes, notes
    notes = patched("trl/phi3.jinja").report.notes
    assert any("'</s>', written after the turn" in note for note in notes), notes


def test_gpt_oss_header_is_generated_after_reasoning_but_not_when_it_opens_the_turn():
    # `<|start|>assistant` opens the reply (the prompt wrote it) unless the analysis channel came first,
    # in which case the model writes it; the output is written twice under the template's own test.
    question = {"role": "user", "content": "2+2?"}
    plain = [question, {"role": "assistant", "content": "Four."}]
    thinking = [question, {"role": "assistant", "content": "Four.", "thinking": "Add them."}]
    for name in ("trl/gptoss.jinja", "unsloth/gpt-oss.jinja"):
        trained, _ = patched_and_original(name, plain)
        assert trained == ["<|channel|>final<|message|>Four.<|return|>"], name
        trained, _ = patched_and_original(name, thinking)
        assert trained == [
            "<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant<|channel|>final<|message|>Four.<|return|>"
        ], name


@pytest.mark.slow
def test_empty_reasoning_framing_belongs_to_the_header_but_real_reasoning_is_trained():
    # Qwen3.5 (no-think) writes '<think>\n' + reasoning + '\n</think>\n\n' + content in one output. With
    # no reasoning the empty think block is what the generation prompt writes; with reasoning it is generated.
    question = {"role": "user", "content": "2+2?"}
    trained, _ = patched_and_original(
        "trl/qwen3_5_nothink.jinja", [question, {"role": "assistant", "content": "Four."}]
    )
    assert trained == ["Four.<|im_end|>"]
    with_reasoning = {"role": "assistant", "content": "Four.", "reasoning_content": "Add them."}
    trained, _ = patched_and_original("trl/qwen3_5_nothink.jinja", [question, with_reasoning])
    assert trained == ["Add them.\n</think>\n\nFour.<|im_end|>"]


def test_string_and_block_content_are_both_tagged_when_the_template_has_a_branch_for_each():
    # Qwen2.5-VL writes string content with one output and text blocks with a loop of its own.
    for content in ("Hello there", [{"type": "text", "text": "Hello there"}]):
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": content},
        ]
        trained, _ = patched_and_original("trl/qwen2_5_vl.jinja", messages)
        assert trained == ["Hello there<|im_end|>"], content


def test_a_statement_ends_at_its_own_tag_even_when_a_comment_follows():
    # llava: `{% endfor %}{# comment #}`: a tag put after the loop must not land inside the comment's `{#`.
    from templatekit.core.analysis import build_flow
    from templatekit.core.syntax import parse_template

    source = "{% for m in messages %}{% if m.x %}a{% endif %}{# note #}\n{% endfor %}"
    statement = build_flow(parse_template(source)).root.items[0].bodies[0].items[0]
    assert source[statement.start : statement.end] == "{% if m.x %}a{% endif %}"
    result = patched("axolotl/llava.jinja")  # retag=True
    assert result.status == "retagged" and result.report.ok
