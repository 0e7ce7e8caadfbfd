"""Core v2 on the classes of real templates in `../shared/corpus/hard/`: trained = generated, stop token included.

Each test patches a real template, renders a realistic conversation through transformers with the patched
template (the rendering must not change), and checks that exactly what the model generates after its prompt is
trained: tool calls whole, reasoning framing it writes, and the stop marker wherever the template writes it.
"""

from __future__ import annotations

import pytest
from _corpus import TOOLS, patched, patched_and_original, read

import templatekit
from templatekit import PatchError, SpanRenderer
from templatekit.core.pipeline import analyse
from templatekit.errors import FallbackError


def call(name: str, city: str, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": {"city": city}}}


QUESTION = {"role": "user", "content": "Weather in Paris and Rome?"}
ONE_CALL = {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "Paris", "abcdefghi")]}
TWO_CALLS = {
    "role": "assistant",
    "content": "",
    "tool_calls": [call("get_weather", "Paris", "abcdefghi"), call("get_time", "Rome", "bcdefghij")],
}
RESULT_1 = {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "22C"}
RESULT_2 = {"role": "tool", "tool_call_id": "bcdefghij", "name": "get_time", "content": "noon"}
ANSWER = {"role": "assistant", "content": "Sunny and noon."}
THANKS = {"role": "user", "content": "thanks"}
WELCOME = {"role": "assistant", "content": "Welcome."}


@pytest.mark.slow
def test_eos_after_a_rebuilt_message_list_is_trained():
    # mistral-common v3 merges consecutive messages into new objects before its output loop.
    for name in ("hard/mistral-common__v3.jinja", "hard/mistral-common__v7.jinja"):
        trained, _ = patched_and_original(name, [QUESTION, ANSWER, THANKS, WELCOME])
        assert trained == ["Sunny and noon.</s>", "Welcome.</s>"], name


@pytest.mark.slow
def test_mistral_tool_calls_are_trained_whole():
    # `[TOOL_CALLS]name[ARGS]{json}`: the name and its framing are generated, not a header.
    trained, _ = patched_and_original(
        "hard/mistral-common__v13.jinja", [QUESTION, TWO_CALLS, RESULT_1, RESULT_2, ANSWER]
    )
    assert trained == [
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"city": "Rome"}</s>',
        "Sunny and noon.</s>",
    ]
    trained, _ = patched_and_original("hard/mistral-common__v15_think.jinja", [QUESTION, ONE_CALL, RESULT_1, ANSWER])
    assert trained == ['[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>', "Sunny and noon.</s>"]


def test_reasoning_framing_the_assistant_writes_is_generated():
    thinking = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check it."}
    trained, _ = patched_and_original("hard/mistral-common__v11_think.jinja", [QUESTION, thinking])
    assert trained == ["<think>Check it.</think>Sunny.</s>"]


def test_tool_calls_through_an_escaping_filter_are_trained_as_rendered():
    trained, _ = patched_and_original("hard/mistral-common__v2.jinja", [QUESTION, ONE_CALL, RESULT_1, ANSWER])
    assert trained == [
        '[TOOL_CALLS][{&#34;name&#34;: &#34;get_weather&#34;, &#34;arguments&#34;: {"city": "Paris"}}]</s>',
        "Sunny and noon.</s>",
    ]


def test_parallel_tool_calls_train_the_separator_between_calls():
    trained, _ = patched_and_original(
        "hard/vllm__tool_chat_template_hermes.jinja", [QUESTION, TWO_CALLS, RESULT_1, RESULT_2, ANSWER]
    )
    assert trained == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
        "Sunny and noon.<|im_end|>",
    ]


def test_tool_call_framing_before_the_first_argument_is_generated():
    # Hunyuan also tells the model to open every reply with "助手：" (it generates it; its prompt does not).
    trained, _ = patched_and_original(
        "hard/vllm__tool_chat_template_hunyuan_a13b.jinja", [QUESTION, ONE_CALL, RESULT_1, ANSWER], tools=TOOLS
    )
    assert trained == [
        '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls><|eos|>',
        "助手：Sunny and noon.<|eos|>",
    ]


def test_end_of_turn_of_a_tool_call_turn_is_trained():
    # This ChatML drops tool calls: the turn still writes (and the model still generates) its end marker. The
    # last reply has none: the template writes <|im_end|> only when a message follows.
    trained, _ = patched_and_original("hard/vllm__template_chatml.jinja", [QUESTION, ONE_CALL, RESULT_1, ANSWER])
    assert trained == ["<|im_end|>", "Sunny and noon."]


def test_glm4_keeps_its_newlines_and_trains_the_next_role_token():
    # GLM-4-0414: the generation prompt is `<|assistant|>` alone, so the newline after it is generated; the
    # turn has no end marker, and `<|user|>` (a stop token of the model) ends it where it follows.
    trained, text = patched_and_original("hard/xinference__glm4-0414.jinja", [QUESTION, ANSWER, THANKS, WELCOME])
    assert trained == ["\nSunny and noon.<|user|>", "\nWelcome."]
    assert "<|assistant|>\nSunny and noon.<|user|>\nthanks" in text


def test_granite_function_calling_keeps_its_newline():
    with_call = {"role": "assistant", "content": "Let me check.", "tool_calls": ONE_CALL["tool_calls"]}
    trained, _ = patched_and_original(
        "hard/vllm__tool_chat_template_granite_20b_fc.jinja", [QUESTION, with_call, RESULT_1, ANSWER], tools=TOOLS
    )
    assert trained == [
        '\n<function_call> {"name": "get_weather", "arguments": {"city": "Paris"}}\n<|endoftext|>',
        "Sunny and noon. <|endoftext|>",
    ]


def test_parallel_calls_whose_first_and_later_calls_come_from_different_branches():
    # vLLM's DeepSeek-V3 writes the first call (with `<｜tool▁calls▁begin｜>`) in one branch and the others in
    # another; each call writes its own end marker. The calls, the whitespace the template writes between them
    # and the end of the turn are generated; the tool outputs and their markers are not.
    trained, text = patched_and_original(
        "hard/vllm__tool_chat_template_deepseekv3.jinja",
        [QUESTION, TWO_CALLS, RESULT_1, RESULT_2, ANSWER, THANKS, WELCOME],
        tools=TOOLS,
    )
    calls, answer, welcome = trained
    assert calls.strip().startswith("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather")
    assert 'get_time\n```json\n{"city": "Rome"}\n```<｜tool▁call▁end｜>' in calls
    assert calls.endswith("<｜tool▁calls▁end｜><｜end▁of▁sentence｜>")
    assert answer == "Sunny and noon.<｜end▁of▁sentence｜>" and welcome.strip() == "Welcome.<｜end▁of▁sentence｜>"
    assert "22C" in text and not any("22C" in piece or "tool▁output" in piece for piece in trained)


def test_a_stop_marker_after_whitespace_belongs_to_the_turn():
    # xinference's DeepSeek-V3 writes `content  <｜end▁of▁sentence｜>`, the marker only when a message follows.
    # The turn ends after the marker; the blank text before the marker's `if` is trained under its test, so
    # the last reply (no marker) ends at its content.
    template = read("hard/xinference__deepseek-v3.jinja")
    layout = analyse(template, ("assistant",), False).layouts["multi_turn"]
    first, last = layout.turns
    assert layout.text[first.start : first.end] == "  tkassistcon2q  <｜end▁of▁sentence｜>"
    assert layout.text[last.start : last.end] == "  tkassistcon4q"
    trained, _ = patched_and_original("hard/xinference__deepseek-v3.jinja", [QUESTION, ANSWER, THANKS, WELCOME])
    assert trained == ["  Sunny and noon.  <｜end▁of▁sentence｜>", "  Welcome."]


def test_reasoning_then_tool_calls_in_one_message_is_trained_as_generated():
    # Muse Glimmer writes reasoning as a message to itself, then each call as a message to the tool, all after
    # one generation prompt: after reasoning, the first call's `<|start|>assistant` is generated, not a header
    # (a probe with both in one message shows it). The loop over calls is wrapped whole when the turn began
    # in the reasoning branch or in later calls, and split after the header otherwise.
    template = read("trl/muse_glimmer.jinja")
    layout = analyse(template, ("assistant",), False).layouts["reasoning_tool_call"]
    step = layout.text[layout.turns[0].start : layout.turns[0].end]
    assert step.startswith(" to=self<|message|>tkassistrea1q<|eom|><|start|>assistant to=tkassistfun1q<|message|>")
    calls = (
        '<|start|>assistant to=get_weather<|message|><atem:function_calls>\n<atem:invoke name="get_weather">\n'
        '<atem:parameter name="city">Paris</atem:parameter>\n</atem:invoke>\n</atem:function_calls><|eom|>'
        '<|start|>assistant to=get_time<|message|><atem:function_calls>\n<atem:invoke name="get_time">\n'
        '<atem:parameter name="city">Rome</atem:parameter>\n</atem:invoke>\n</atem:function_calls><|eot|>'
    )
    answer = " to=user<|message|>Sunny and noon.<|eot|>"
    thinking = dict(TWO_CALLS, reasoning_content="Look up.")
    trained, _ = patched_and_original("trl/muse_glimmer.jinja", [QUESTION, thinking, RESULT_1, RESULT_2, ANSWER])
    assert trained == [" to=self<|message|>Look up.<|eom|>" + calls, answer]
    trained, _ = patched_and_original("trl/muse_glimmer.jinja", [QUESTION, TWO_CALLS, RESULT_1, RESULT_2, ANSWER])
    assert trained == [calls.removeprefix("<|start|>assistant"), answer]
    reply = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check it."}
    trained, _ = patched_and_original("trl/muse_glimmer.jinja", [QUESTION, reply, THANKS, WELCOME])
    assert trained == [
        " to=self<|message|>Check it.<|eom|><|start|>assistant to=user<|message|>Sunny.<|eot|>",
        " to=user<|message|>Welcome.<|eot|>",
    ]


def test_a_separator_the_previous_message_writes_is_generated():
    # BlenderBot writes no generation prompt and separates messages with two spaces written by the message
    # before: after the user's text the model generates "  reply</s>". That much is tagged (in the user's
    # branch, when an assistant message follows). It drops tool calls: a tool-call turn renders nothing of its
    # own, and the separator before it is where its prompt parts from the text, so it may be trained there.
    template = read("hard/hfjs__e2e-blenderbot.jinja")
    layout = analyse(template, ("assistant",), False).layouts["single_turn"]
    assert layout.text[layout.turns[0].start : layout.turns[0].end] == "  tkassistcon1q</s>"
    empty = analyse(template, ("assistant",), False).layouts["tool_call"]
    optional = [turn for turn in empty.turns if turn.optional]
    assert [empty.text[turn.start : turn.end] for turn in optional] == ["    "]
    trained, text = patched_and_original("hard/hfjs__e2e-blenderbot.jinja", [QUESTION, ANSWER, THANKS, WELCOME])
    assert trained == ["  Sunny and noon.", "  Welcome.</s>"]
    assert text == " Weather in Paris and Rome?  Sunny and noon.   thanks  Welcome.</s>"


@pytest.mark.slow
def test_a_reply_written_with_its_header_by_one_macro_call_is_tagged_once_the_macro_is_written_out():
    # YandexGPT and Kimi K3 write the assistant's header and reply in one `{{ render(message) }}` call.
    # transformers measures a generation block inside a macro from where the call began, so the body is
    # written out at its only call (a `with` block binding the arguments) and tagged there.
    trained, text = patched_and_original(
        "hard/llama.cpp-tests__tct-yandex_YandexGPT-5-Lite-8B-instruct.jinja", [QUESTION, ANSWER, THANKS, WELCOME]
    )
    assert trained == [" Sunny and noon."] and " Ассистент: Sunny and noon.\n\n" in text
    result = patched("hard/llama.cpp__Kimi-K3.jinja")
    assert any("render_assistant" in note and "written out" in note for note in result.report.notes)
    thinking = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check it."}
    trained, _ = patched_and_original("hard/llama.cpp__Kimi-K3.jinja", [QUESTION, thinking])
    assert trained == [
        "Check it.<|close|>think<|sep|><|open|>response<|sep|>Sunny.<|close|>response<|sep|>"
        "<|close|>message<|sep|><|end_of_msg|>"
    ]
    trained, _ = patched_and_original("hard/llama.cpp__Kimi-K3.jinja", [QUESTION, ONE_CALL, RESULT_1, ANSWER])
    assert trained[0].startswith("<|close|>think<|sep|><|open|>response<|sep|><|close|>response<|sep|><|open|>tools")
    assert trained[0].endswith("<|close|>tools<|sep|><|close|>message<|sep|><|end_of_msg|>")
    assert "22C" not in "".join(trained)


def test_template_without_a_generation_prompt_and_eos_only_without_one():
    # open-instruct's simple chat writes no generation prompt: the model writes its role line too. It crashed.
    trained, _ = patched_and_original("hard/open-instruct__simple_chat.jinja", [QUESTION, ANSWER])
    assert trained == ["\n\nAssistant: Sunny and noon.</s>"]


@pytest.mark.slow
def test_existing_tags_that_train_the_header_are_replaced():
    original = read("hard/alignment-handbook__smollm3_sft_sft.jinja")
    assert not templatekit.check_template(original).ok
    result = templatekit.patch_template(original)
    assert result.status == "retagged" and result.report.ok
    with pytest.raises(PatchError, match="retag=False"):
        templatekit.patch_template(original, retag=False)


def test_a_classifier_that_quotes_the_assistant_is_refused_by_patch_and_fallback():
    template = read("hard/hfjs-ollama-automap__shieldgemma-27b.jinja")
    with pytest.raises(PatchError, match="only quoted inside a prompt"):
        templatekit.patch_template(template)
    with pytest.raises((PatchError, FallbackError)):
        SpanRenderer(template, fallback=True)


def test_a_template_that_renders_no_message_is_refused_with_its_reason():
    with pytest.raises(PatchError, match="no message loop"):
        templatekit.patch_template(read("hard/gpt4all__models3-Wizard_v1.2.jinja"))


@pytest.mark.parametrize(
    "name",
    [
        "hard/llama.cpp-tests__tct-yandex_YandexGPT-5-Lite-8B-instruct.jinja",
        "hard/hfjs__e2e-blenderbot.jinja",
        "hard/xinference__deepseek-v3.jinja",
    ],
)
def test_fallback_never_trains_someone_elses_text(name):
    # Where the patcher refuses, the fallback either refuses too or trains only assistant text.
    template = read(name)
    messages = [QUESTION, ONE_CALL, RESULT_1, ANSWER, THANKS, WELCOME]
    try:
        renderer = SpanRenderer(template, fallback=True)
        text, spans = renderer.render(messages)
    except (PatchError, FallbackError) as error:
        assert str(error)
        return
    except Exception as error:  # the template itself rejects this conversation
        assert "tool" in str(error).lower() or "role" in str(error).lower(), error
        return
    trained = "".join(text[s:e] for s, e in spans)
    for foreign in ("Weather in Paris", "22C", "thanks"):
        assert foreign not in trained, (name, trained)
