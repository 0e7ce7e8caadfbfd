"""Core v3 on the classes of real templates that were refused or mistrained: one patch right under every setting,
judges refused, and each class of `../shared/corpus/hard/` patched so that exactly what the model generates after
its prompt is trained.

Each test renders a realistic conversation through transformers' own renderer (`render_jinja_template`, its
`AssistantTracker`) with the patched template, checks the text is the original's, and names the trained text.
"""

from __future__ import annotations

import pytest
from _paths import corpus_file

import templatekit
from templatekit import PatchError, check_template, patch_template, render_with_spans
from templatekit.core.chat_render import render_chat
from templatekit.core.verify import merge_adjacent

QUESTION = {"role": "user", "content": "Weather in Paris?"}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "22C"}
ANSWER = {"role": "assistant", "content": "Sunny."}
THANKS = {"role": "user", "content": "thanks"}
WELCOME = {"role": "assistant", "content": "Welcome."}


def read(name: str) -> str:
    return corpus_file(name).read_text(encoding="utf-8")


def rendered(template: str, messages: list[dict], **kwargs) -> tuple[str, list[str]]:
    """transformers' render of `messages`, and the trained pieces (adjacent spans joined)."""
    texts, spans = render_chat(
        conversations=[messages],
        chat_template=template,
        return_assistant_tokens_mask=True,
        bos_token="<s>",
        eos_token="</s>",
        **kwargs,
    )
    text = texts[0]
    return text, [text[start:end] for start, end in merge_adjacent([tuple(span) for span in spans[0]])]


def trained(name: str, messages: list[dict], **kwargs) -> list[str]:
    """What the patched corpus template trains of `messages`, checked to render exactly like the original."""
    original = read(name)
    patched = patch_template(original).template
    text, pieces = rendered(patched, messages, **kwargs)
    assert text == rendered(original, messages, **kwargs)[0]
    return pieces


# ------------------------------------------------------------------------------- classes refused or mistrained


@pytest.mark.parametrize("thinking", [None, False, True])
def test_gemma4_is_patched_though_its_prompt_writes_an_empty_thought_channel(thinking):
    # With thinking off (the default) the generation prompt writes `<|channel>thought\n<channel|>`, which history
    # does not: the reply after it is what the model generates.
    settings = {} if thinking is None else {"enable_thinking": thinking}
    pieces = trained("hard/hf__google-gemma-4-26B-A4B-it.jinja", [QUESTION, ANSWER, THANKS, WELCOME], **settings)
    assert pieces == ["Sunny.<turn|>", "Welcome.<turn|>"]


def test_gemma4_trains_the_reasoning_the_model_writes_when_thinking_is_on():
    thinking = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Look it up."}
    pieces = trained("hard/hf__google-gemma-4-26B-A4B-it.jinja", [QUESTION, thinking], enable_thinking=True)
    # The prompt with thinking on is `<|turn>model\n`: the thought channel is generated whole.
    assert pieces == ["<|channel>thought\nLook it up.\n<channel|>Sunny.<turn|>"]


def test_olmo3_trains_the_end_of_a_tool_call_turn():
    # The last message ends with eos, one a message follows ends with `<|im_end|>`: both are the turn's stop.
    pieces = trained("hard/hf__allenai-Olmo-3-7B-Instruct.jinja", [QUESTION, CALL, RESULT, ANSWER])
    assert pieces == ['<function_calls>get_weather(city="Paris")</function_calls><|im_end|>', "Sunny.</s>"]


def test_apriel_trains_the_call_id_it_writes_inside_the_call():
    pieces = trained("hard/hf__ServiceNow-AI-Apriel-1.6-15b-Thinker.jinja", [QUESTION, CALL, RESULT, ANSWER])
    call = pieces[0]
    assert '"id": "abcdefghi"' in call and call.endswith("]</tool_calls>\n<|end|>")
    assert "22C" not in "".join(pieces)


def test_glm4_9b_keeps_its_newlines_and_stops_at_the_next_role_token():
    pieces = trained("hard/hf__zai-org-glm-4-9b-chat.jinja", [QUESTION, ANSWER, THANKS, WELCOME])
    # No end-of-turn marker of its own: the next role token stops the turn and is trained after it.
    assert pieces == ["\nSunny.<|user|>", "\nWelcome."]


def test_diffusion_gemma_trains_the_header_the_model_writes_after_a_tool_result():
    # After a tool result the prompt ends with the result: `<|turn>model\n` is generated there (TRL's copy leaves
    # it out; invariant 2 decides), and stays untrained after a user's message.
    pieces = trained("trl/diffusion_gemma.jinja", [QUESTION, CALL, RESULT, ANSWER, THANKS, WELCOME])
    assert "<|turn>model\nSunny.<turn|>" in pieces and "Welcome.<turn|>" in pieces
    assert not any(piece.startswith("<|turn>model\nWelcome") for piece in pieces)


def test_existing_tags_whose_whitespace_matters_are_replaced_exactly():
    # TRL's tiny Qwen3: `}}\n {% generation %}\n {%- if` keeps a newline that a bare removal would lose.
    original = read("hard/hf__trl-internal-testing-tiny-Qwen3ForCausalLM.jinja")
    result = patch_template(original)
    assert result.status == "retagged"
    for thinking in (False, True):
        text, pieces = rendered(result.template, [QUESTION, ANSWER], enable_thinking=thinking)
        assert text == rendered(original, [QUESTION, ANSWER], enable_thinking=thinking)[0]
        assert pieces == ["Sunny.<|im_end|>" if not thinking else "<think>\n\n</think>\n\nSunny.<|im_end|>"]


@pytest.mark.parametrize(
    "name",
    ["hard/hf__nvidia-Qwen3-Nemotron-235B-A22B-GenRM-2603.jinja", "hard/hfjs-ollama-automap__shieldgemma-27b.jinja"],
)
def test_judges_and_guards_that_quote_the_assistant_are_refused(name):
    with pytest.raises(PatchError, match="classifier or judge"):
        patch_template(read(name))


def test_a_template_that_always_writes_its_generation_prompt_is_not_taken_for_a_judge():
    # CodeLlama 70B's shape: every turn is `Source: role\n\n text <step> `, and the prompt for the next reply is
    # written after the loop whether asked or not.
    template = (
        "{{ bos_token }}{% for m in messages %}{{ 'Source: ' + m.role + '\\n\\n ' + m.content | trim + ' <step> ' }}"
        "{% endfor %}{{ 'Source: assistant\\nDestination: user\\n\\n ' }}"
    )
    text, pieces = rendered(patch_template(template).template, [QUESTION, ANSWER, THANKS, WELCOME])
    # The prompt shares `Source: assistant\n` with history; what follows it there is generated.
    assert pieces == ["\n Sunny. <step>", "\n Welcome. <step>"]


def test_a_judge_that_quotes_responses_in_one_prompt_is_refused():
    # A reward model's shape: every message quoted in one user turn, the verdict asked for after it.
    template = (
        "{{ '<|im_start|>user\\nRate the answer.\\n' }}{% for m in messages %}"
        "{{ m.role | capitalize + ': ' + m.content + '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(PatchError, match="judge"):
        patch_template(template)


def test_tool_calls_a_template_takes_only_as_json_text_are_analysed():
    # Like llama.cpp's DeepSeek copies: `+ arguments` fails on a mapping. The probes retry with JSON text.
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<a>' }}{% if m.tool_calls %}"
        "{% for c in m.tool_calls %}{{ '<call>' + c.function.name + ' ' + c.function.arguments + '</call>' }}"
        "{% endfor %}{% else %}{{ m.content }}{% endif %}{{ '</a>' }}{% else %}{{ '<' + m.role + '>' + m.content + "
        "'</' + m.role + '>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<a>' }}{% endif %}"
    )
    patched = patch_template(template).template
    call = dict(CALL, tool_calls=[dict(CALL["tool_calls"][0], function={"name": "f", "arguments": '{"x": 1}'})])
    assert rendered(patched, [QUESTION, call, RESULT, ANSWER])[1] == ['<call>f {"x": 1}</call></a>', "Sunny.</a>"]


# ------------------------------------------------------------------------------------------ precision


def test_whitespace_after_the_stop_marker_is_accepted_with_a_note_unless_strict():
    from pathlib import Path

    import trl

    shipped = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_training.jinja").read_text(encoding="utf-8")
    report = check_template(shipped)
    assert report.ok and report.imprecise
    assert any(note.startswith("imprecise:") for note in report.notes)
    strict = check_template(shipped, strict=True)
    assert not strict.ok and "'\\n' after the end of the turn is trained" in strict.reasons[0]


def test_the_patcher_leaves_whitespace_after_the_stop_marker_out_where_it_can():
    result = patch_template(read("trl/qwen2_5.jinja"))
    assert not result.report.imprecise
    assert rendered(result.template, [QUESTION, ANSWER, THANKS, WELCOME])[1] == [
        "Sunny.<|im_end|>",
        "Welcome.<|im_end|>",
    ]


# -------------------------------------------------------------------------------------------- input forms


def test_a_crlf_template_is_read_as_jinja_reads_it_and_written_back_with_crlf():
    from pathlib import Path

    import trl

    crlf = (Path(trl.__file__).parent / "chat_templates" / "glm4moe_training.jinja").read_bytes().decode("utf-8")
    assert "\r\n" in crlf
    assert check_template(crlf).tagged  # parsed and verified, not refused as malformed
    original = read("trl/qwen2_5.jinja").replace("\n", "\r\n")
    patched = patch_template(original).template
    assert patched.count("\r\n") == patched.count("\n")
    assert rendered(patched, [QUESTION, ANSWER])[1] == ["Sunny.<|im_end|>"]


def test_a_generation_tag_inside_a_comment_is_not_a_tag():
    template = "{# wrap the reply in {% generation %} ... {% endgeneration %} #}" + read("trl/qwen2_5.jinja")
    assert check_template(template).reasons == ["the template carries no {% generation %} tags"]
    result = patch_template(template)
    assert result.status == "patched" and result.template.startswith("{# wrap the reply in {% generation %}")
    stripped = templatekit.strip_template(result.template)  # verified to render as the tagged one does
    assert stripped.startswith("{# wrap the reply in {% generation %}") and not check_template(stripped).tagged


# ------------------------------------------------------------------------------ a template's own tags downstream


def test_tags_verified_for_the_last_turn_only_are_used_as_they_are():
    tagged = patch_template(read("trl/qwen2_5.jinja"), only_last_turn=True).template
    text, spans = render_with_spans(tagged, [QUESTION, ANSWER, THANKS, WELCOME])
    assert [text[s:e] for s, e in spans] == ["Welcome.<|im_end|>"]  # as TRL, given this template, trains
    assert not check_template(tagged).ok and check_template(tagged, only_last_turn=True).ok


@pytest.mark.parametrize("content", [None, ""])
def test_deepseek_tool_calls_are_trained_whether_content_is_none_or_empty(content):
    # DeepSeek's templates write the first call together with `<｜Assistant｜>` in a branch taken only when the
    # content is None, and take arguments only as JSON text: both shapes are probed.
    calls = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": "abcdefghi", "type": "function", "function": {"name": name, "arguments": '{"a": 1}'}}
            for name in ("f", "g")
        ],
    }
    pieces = trained("trl/deepseekv3.jinja", [QUESTION, calls, RESULT, RESULT, ANSWER])
    assert pieces[0].startswith("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n")
    assert pieces[0].endswith("<｜tool▁calls▁end｜><｜end▁of▁sentence｜>") and "sep｜>g\n" in pieces[0]
    assert pieces[1] == "Sunny.<｜end▁of▁sentence｜>" and "22C" not in "".join(pieces)


# ------------------------------------------------------------------------------------- rows that end on a call

# The class of Kimi K2 Thinking: the messages after the last plain answer are written by a second loop (with their
# reasoning), the ones before it by the first. A row that ends on a call (an agent's step) reaches only the second.
LAST_CALLS_APART = (
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for i in range(messages|length) -%}"
    "{%- if messages[i].role == 'assistant' and not messages[i].tool_calls %}{% set ns.last = i %}{% endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages[:ns.last + 1] -%}"
    "<|{{ m.role }}|>{% if m.role == 'assistant' %}<think></think>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}{{ c.function.arguments | tojson }}</call>"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|end|>"
    "{%- endfor -%}"
    "{%- for m in messages[ns.last + 1:] -%}"
    "<|{{ m.role }}|>{% if m.role == 'assistant' %}<think>{{ m.reasoning_content or '' }}</think>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}{{ c.function.arguments | tojson }}</call>"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif -%}"
)


def test_a_row_that_ends_on_a_call_trains_the_call_written_apart_from_history():
    tagged = patch_template(LAST_CALLS_APART).template
    text, trained = rendered(tagged, [QUESTION, CALL])
    assert text == rendered(LAST_CALLS_APART, [QUESTION, CALL])[0]
    assert trained == ['<think></think><call>get_weather{"city": "Paris"}</call><|end|>']
    text, trained = rendered(tagged, [QUESTION, CALL, RESULT, ANSWER])
    assert trained == [
        '<think></think><call>get_weather{"city": "Paris"}</call><|end|>',
        "<think></think>Sunny.<|end|>",
    ]


def test_a_call_that_ends_the_row_is_trained_up_to_its_stop_token():
    # Mistral v3 (Tekken) writes the call's closing brackets and </s> after its id; Jamba writes <|eom|> after
    # the loop; a template that drops tool calls trains only what it writes for the empty turn, its EOS included.
    tagged = patch_template(read("axolotl/mistral_v3_tekken.jinja")).template
    text, trained = rendered(tagged, [QUESTION, CALL])
    assert trained[-1].endswith('"id": "abcdefghi"}]</s>'), trained
    tagged = patch_template(read("axolotl/jamba.jinja")).template
    text, trained = rendered(tagged, [QUESTION, CALL])
    assert trained[-1].endswith("</tool_calls><|eom|>") and text.endswith(trained[-1])
