"""End to end on CPU: a real Qwen2.5 tokenizer with the corpus Qwen2.5 template, patched by
templatekit.patch_tokenizer, trains a tiny Qwen2 model with TRL's SFTTrainer and
SFTConfig(assistant_only_loss=True). The labels TRL builds are checked token by token against an
expectation computed here from the rendered text: the assistant replies and the <|im_end|> closing
each of them are trained, everything else is -100."""

from __future__ import annotations

import copy
import logging
import math

import datasets as datasets  # noqa: E402
import pytest
import torch as torch  # noqa: E402
from _paths import corpus_dir
from _training import make_conversations, sft_config, tiny_qwen2

import templatekit

pytestmark = pytest.mark.e2e

QWEN_TEMPLATE = corpus_dir() / "trl" / "qwen2_5.jinja"
if not QWEN_TEMPLATE.is_file():
    pytest.skip(f"corpus template not found: {QWEN_TEMPLATE}", allow_module_level=True)
HEADER, EOT = "<|im_start|>assistant\n", "<|im_end|>"


def expected_labels(tokenizer, input_ids: list[int]) -> list[int]:
    """From the token ids alone: decode, find each assistant reply by its header and <|im_end|>, and
    keep the ids of the tokens with a character in a reply (the reply plus its <|im_end|>)."""
    text = tokenizer.decode(input_ids)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == input_ids, "decode/encode must round-trip for this check"
    spans, cursor = [], 0
    while (start := text.find(HEADER, cursor)) >= 0:
        start += len(HEADER)
        end = text.index(EOT, start) + len(EOT)
        spans.append((start, end))
        cursor = end
    return [
        token if any(max(s, a) < min(e, b) for a, b in spans) else -100
        for token, (s, e) in zip(input_ids, enc["offset_mapping"])
    ]


@pytest.fixture
def patched_qwen(qwen_tokenizer):
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = QWEN_TEMPLATE.read_text(encoding="utf-8")
    original = tokenizer.chat_template
    patched = templatekit.patch_tokenizer(tokenizer)
    assert patched.chat_template != original and "generation" in patched.chat_template
    return patched, original


def test_sft_assistant_only_loss_with_patched_template(patched_qwen, tmp_path, caplog):
    from trl import SFTTrainer

    tokenizer, original = patched_qwen
    conversations = make_conversations()
    dataset = datasets.Dataset.from_dict({"messages": conversations})

    with caplog.at_level(logging.WARNING):
        trainer = SFTTrainer(
            model=tiny_qwen2(tokenizer),
            args=sft_config(tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        result = trainer.train()
    end_of_turn = [r.getMessage() for r in caplog.records if "end-of-turn" in r.getMessage()]
    assert end_of_turn == []
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    assert trainer.chat_template is None  # TRL kept our template rather than swapping in its own

    # The batch the model trains on: labels are exactly the assistant replies and their <|im_end|>.
    renders = {
        tokenizer.apply_chat_template(messages, tokenize=False, chat_template=original): messages
        for messages in conversations
    }
    seen = 0
    for batch in trainer.get_train_dataloader():
        for input_ids, attention, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            length = int(attention.sum())
            ids, labels = input_ids.tolist(), labels.tolist()
            assert labels[length:] == [-100] * (len(ids) - length)  # padding
            ids, labels = ids[:length], labels[:length]
            assert labels == expected_labels(tokenizer, ids)

            # and, read the other way round: the trained tokens spell the conversation's replies
            messages = renders[tokenizer.decode(ids)]
            replies = [m["content"] + EOT for m in messages if m["role"] == "assistant"]
            assert tokenizer.decode([t for t in labels if t != -100]) == "".join(replies)
            assert labels[0] == -100  # the system header
            seen += 1
        if seen >= 4:
            break
    assert seen >= 4


def test_trl_reports_an_untrained_end_of_turn(qwen_tokenizer, tmp_path, caplog):
    """Control for the check above: TRL's end-of-turn warning is visible to caplog when the tags
    leave <|im_end|> out."""
    from trl import SFTTrainer

    tokenizer = copy.deepcopy(qwen_tokenizer)
    original = QWEN_TEMPLATE.read_text(encoding="utf-8")
    line = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    assert line in original
    bad = (
        "{{- '<|im_start|>' + message.role + '\\n' }}{% if message.role == 'assistant' %}{% generation %}"
        "{{ message.content }}{% endgeneration %}{% else %}{{ message.content }}{% endif %}{{ '<|im_end|>\\n' }}"
    )
    tokenizer.chat_template = original.replace(line, bad)
    dataset = datasets.Dataset.from_dict({"messages": make_conversations(2)})
    with caplog.at_level(logging.WARNING):
        SFTTrainer(
            model=tiny_qwen2(tokenizer), args=sft_config(tmp_path), train_dataset=dataset, processing_class=tokenizer
        )
    assert any("end-of-turn" in r.getMessage() for r in caplog.records)
