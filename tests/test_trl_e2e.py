"""End to end on CPU: a real Qwen2.5 tokenizer with the corpus Qwen2.5 template, patched by
templatekit.patch_tokenizer, trains a tiny Qwen2 model with TRL's SFTTrainer and
SFTConfig(assistant_only_loss=True). The labels TRL builds are checked token by token against an
expectation computed here from the rendered text: the assistant replies and the <|im_end|> closing
each of them are trained, everything else is -100."""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path

import pytest

import templatekit

pytest.importorskip("trl")
torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
QWEN_TEMPLATE = CORPUS / "trl" / "qwen2_5.jinja"
if not QWEN_TEMPLATE.is_file():
    pytest.skip(f"corpus template not found: {QWEN_TEMPLATE}", allow_module_level=True)
HEADER, EOT = "<|im_start|>assistant\n", "<|im_end|>"

SYSTEMS = ["You are a concise assistant.", "You answer like a pirate.", "Reply in plain English."]
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Name a prime number above 10.",
    "What colour is the sky on a clear day?",
    "Who wrote Hamlet?",
    "What is 12 times 12?",
]
ANSWERS = [
    "Paris.",
    "Eight legs, always.",
    "Eleven is prime; so is 13.",
    "Blue, mostly.",
    "William Shakespeare wrote it around 1600.",
    "It is 144.",
]


def make_conversations(count: int = 8, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    conversations = []
    for index in range(count):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        for turn in range(rng.randint(1, 3)):
            q = rng.randrange(len(QUESTIONS))
            messages.append({"role": "user", "content": QUESTIONS[q]})
            messages.append({"role": "assistant", "content": f"{ANSWERS[q]} (#{index}.{turn})"})
        conversations.append(messages)
    return conversations


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


def tiny_qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def sft_config(tmp_path, **overrides):
    from trl import SFTConfig

    options = dict(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return SFTConfig(**options)


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
