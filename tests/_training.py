"""What the training tests share: conversations to train on, a tiny model and TRL's config for a CPU run."""

from __future__ import annotations

import random

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
    """Everyday conversations (a system prompt, one to three question/answer turns), each answer unique."""
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


PIECES = ["alpha", "beta", "gamma 42", "δέλτα", "𝔘nicode", "x=1+2", "new\nline", "tabs\tand  spaces", "ok!"]


def conversations(count: int, *, seed: int = 0, system: bool = True) -> list[list[dict]]:
    """Conversations whose every content is unique (a sentinel) and starts and ends with a letter."""
    rng = random.Random(seed)
    rows = []
    for row in range(count):
        messages = [{"role": "system", "content": f"sys{row} {rng.choice(PIECES)} end"}] if system else []
        for turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": f"ask{row}t{turn} {' '.join(rng.choices(PIECES, k=3))} q"})
            messages.append(
                {"role": "assistant", "content": f"reply{row}t{turn} {' '.join(rng.choices(PIECES, k=4))} z"}
            )
        rows.append(messages)
    return rows


def truth_spans(text: str, messages: list[dict], eot: str) -> list[tuple[int, int]]:
    """Each assistant content and the end-of-turn marker right after it, found by search."""
    spans, cursor = [], 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        start = text.index(message["content"], cursor)
        end = start + len(message["content"])
        assert text.startswith(eot, end), f"no {eot!r} right after {message['content']!r}"
        spans.append((start, end + len(eot)))
        cursor = end
    return spans


def tiny_qwen2(tokenizer):
    """A tiny random Qwen2 model (2 layers, width 32) for `tokenizer`'s vocabulary: trains on CPU in a second."""
    import torch
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
    """TRL's `SFTConfig` for a two-step CPU run with `assistant_only_loss=True`, saving nothing (unless overridden)."""
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
