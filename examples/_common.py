"""Helpers shared by the Unsloth-style examples (train_on_responses_only.py, custom_roles.py).

The offline Qwen2.5 tokenizer, the model built from a config and the arithmetic conversations come from
train_sft_assistant_only.py; this module adds what the Unsloth-style examples need on top: the offline Llama 3
tokenizer, conversations rendered to text as Unsloth users feed them to TRL, the trainer settings, and a
readable view of which tokens the labels train.
"""

from __future__ import annotations

import sys
import time

from train_sft_assistant_only import HERE, config_model, make_conversations, offline_tokenizer

__all__ = [
    "chat_text",
    "config_model",
    "make_conversations",
    "offline_llama3_tokenizer",
    "offline_tokenizer",
    "report_labels",
    "sft_config",
    "train_and_report",
    "trained_pieces",
]


def offline_llama3_tokenizer(template: str):
    """The real Llama 3 tokenizer built without the Hub (needs the llama-models package), with `template`."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tokenizers_offline import llama3_tokenizer

    tokenizer = llama3_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def chat_text(tokenizer, messages: list[dict]) -> str:
    """A conversation rendered by the tokenizer's chat template, ready for a `text` column.

    Two trims keep TRL from changing what the template wrote: the tokenizer adds BOS itself when TRL tokenizes
    the text (so a BOS the template wrote would appear twice), and TRL appends the EOS token to a text that does
    not end with it (a ChatML render ends with "<|im_end|>\\n"). Neither trimmed part is ever trained.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if tokenizer.bos_token:
        text = text.removeprefix(tokenizer.bos_token)
    return text.rstrip()


def sft_config(output: str, *, tiny: bool, steps: int | None, **options):
    """`SFTConfig` for these examples: a few CPU steps with `tiny`, else bf16 on a GPU when there is one."""
    import torch
    from trl import SFTConfig

    gpu = torch.cuda.is_available() and not tiny
    steps = steps or (3 if tiny else 300)
    print(f"device: {'cuda (bf16)' if gpu else 'cpu (fp32)'}; {steps} steps", flush=True)
    return SFTConfig(
        output_dir=output,
        max_steps=steps,
        per_device_train_batch_size=2 if tiny else 16,
        learning_rate=1e-3 if tiny else 5e-4,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, steps // 10),
        logging_steps=1 if tiny else 10,
        save_strategy="no",
        report_to=[],
        bf16=gpu,
        use_cpu=not gpu,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        max_length=512,
        **options,
    )


def trained_pieces(tokenizer, labels: list[int]) -> list[str]:
    """The trained text of one row: each run of consecutive labels that are not -100, decoded."""
    pieces, run = [], []
    for label in [*labels, -100]:
        if label != -100:
            run.append(label)
        elif run:
            pieces.append(tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False))
            run = []
    return pieces


def report_labels(trainer, tokenizer) -> None:
    """Print how many label tokens are trained, and the trained text of the first row (one repr per line)."""
    rows = trainer.train_dataset["labels"]
    trained = sum(label != -100 for row in rows for label in row)
    total = sum(len(row) for row in rows)
    print(f"trained label tokens: {trained} of {total} ({100 * trained / total:.1f}%)", flush=True)
    print("trained text of example 0:")
    for piece in trained_pieces(tokenizer, rows[0]):
        print(f"  {piece!r}")


def train_and_report(trainer) -> None:
    """Train, then print the first and last logged losses and the mean training loss."""
    started = time.perf_counter()
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"first logged loss {losses[0]:.4f}, last logged loss {losses[-1]:.4f}", flush=True)
    print(
        f"finished {trainer.state.global_step} steps in {time.perf_counter() - started:.1f} s; "
        f"training loss {result.training_loss:.4f}",
        flush=True,
    )
