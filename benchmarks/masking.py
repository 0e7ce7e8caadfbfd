"""Assistant-mask throughput, side by side: templatekit.prepare_dataset vs TRL's path vs Unsloth's path vs the floor.

    .venv/bin/python benchmarks/masking.py [--conversations 2000] [--repeats 3]

All four run in this one process, single-process (num_proc=None), on the same generated conversations (1-4
turns after a system prompt) and the real Qwen2.5 tokenizer (built offline, as the tests do), each as one
`Dataset.map` from the same in-memory dataset to a dataset of token ids:

  (a) prepare_dataset  templatekit: SpanRenderer per conversation; chunks tokenized on a worker thread meanwhile,
                       without offsets or the no-op NFC normalizer, masks from token byte lengths (BatchEncoder)
  (b) TRL              per example apply_chat_template(tokenize=True, return_assistant_tokens_mask=True) with the
                       patched (tagged) template, as SFTTrainer does for assistant_only_loss=True
  (c) Unsloth          render all, tokenize the batch, then unsloth_zoo's train_on_responses_only masking function
                       (loaded from the unsloth-zoo wheel; skipped with a message when it cannot be fetched)
  (d) floor            render (original template) + batched tokenization, no mask at all
  (e) raw floor        the issue's floor, outside datasets: apply_chat_template for every row, then one batched
                       fast-tokenizer call (what any tool must pay; prepare_dataset also builds the Dataset)

Each path is warmed up once, then timed `--repeats` times round-robin (so that noise from other processes falls
on all alike); the best time counts. Targets: prepare_dataset/raw floor >= 1, prepare_dataset/TRL >= 2.5.
The conversations have the issue harness's shape (~410 Qwen tokens; `--short` for ~240).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the offline tokenizer builders live with the tests
sys.path.insert(0, str(ROOT / "benchmarks"))

import datasets  # noqa: E402
import tokenizers_offline  # noqa: E402
from _paths import corpus_dir  # noqa: E402
from _unsloth import load_dataset_utils  # noqa: E402
from datasets import Dataset, Features, Sequence, Value  # noqa: E402

import templatekit  # noqa: E402
from templatekit.training.dataset import prepare_dataset  # noqa: E402

TOPICS = ["the weather", "a recipe", "Python lists", "the French revolution", "tax forms", "a bicycle", "sleep"]
WORDS = (
    "the a of to and in is it you that for on was with as have be at one this from by hot word but what some we "
    "can out other were all there when up use your how said an each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause much mean before "
    "move right boy old too same tell does set three want air well also play small end put home read hand port "
    "large spell add even land here must big high such follow act why ask men change went light kind off need "
    "house picture try us again animal point mother world near build self earth father head stand own page"
).split()
HEADER, EOT = "<|im_start|>assistant\n", "<|im_end|>"


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 10_000)))
    return " ".join(words).capitalize() + rng.choice([".", "?", "!", ".\n\nAlso: fine."])


def make_conversations(count: int, seed: int = 0, long: bool = True) -> list[list[dict[str, str]]]:
    """`count` conversations: a system prompt, then 1-4 user/assistant turns of generated prose.

    `long` (the default) is the shape of the issue's harness, ~410 Qwen tokens a conversation; the short
    shape is ~240."""
    rng = random.Random(seed)
    user, sentences, words = ((6, 50), (2, 6), (8, 40)) if long else ((4, 40), (1, 4), (6, 30))
    conversations = []
    for _ in range(count):
        messages = [{"role": "system", "content": f"You are a helpful assistant. Topic: {rng.choice(TOPICS)}."}]
        for _turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": sentence(rng, *user)})
            reply = " ".join(sentence(rng, *words) for _ in range(rng.randint(*sentences)))
            messages.append({"role": "assistant", "content": reply})
        conversations.append(messages)
    return conversations


def raw_floor(conversations, tokenizer, original: str):
    """The floor the issue defines: apply_chat_template for every row, then one batched fast-tokenizer call;
    no `datasets`, no mask."""
    texts = [
        tokenizer.apply_chat_template(messages, chat_template=original, tokenize=False) for messages in conversations
    ]
    return tokenizer(texts, add_special_tokens=False)


IDS, MASK = Sequence(Value("int32")), Sequence(Value("int8"))


def floor_path(dataset: Dataset, tokenizer, original: str) -> Dataset:
    def render_and_tokenize(batch):
        texts = tokenizer.apply_chat_template(batch["messages"], chat_template=original, tokenize=False)
        return dict(tokenizer(texts, add_special_tokens=False))

    features = Features({"input_ids": IDS, "attention_mask": MASK})
    return dataset.map(render_and_tokenize, batched=True, remove_columns=["messages"], features=features)


def trl_path(dataset: Dataset, tokenizer, tagged: str) -> Dataset:
    from trl.data_utils import _tokenize  # the very call SFTTrainer maps over a conversational dataset

    def one(example):
        out = _tokenize(tokenizer, example["messages"], chat_template=tagged, return_assistant_tokens_mask=True)
        return {"input_ids": out["input_ids"], "assistant_masks": out["assistant_masks"]}

    features = Features({"input_ids": IDS, "assistant_masks": MASK})
    return dataset.map(one, remove_columns=["messages"], features=features)


def unsloth_path(dataset: Dataset, tokenizer, original: str, mask_function) -> Dataset:
    def render_tokenize_mask(batch):
        texts = tokenizer.apply_chat_template(batch["messages"], chat_template=original, tokenize=False)
        encoded = dict(tokenizer(texts, add_special_tokens=False))
        encoded.update(mask_function(encoded))
        return encoded

    features = Features({"input_ids": IDS, "attention_mask": MASK, "labels": IDS})
    return dataset.map(render_tokenize_mask, batched=True, remove_columns=["messages"], features=features)


def templatekit_path(dataset: Dataset, tokenizer) -> Dataset:
    return prepare_dataset(dataset, tokenizer, progress=False)


def check_agreement(ours: Dataset, trl: Dataset, unsloth: Dataset | None) -> list[str]:
    """The paths must compute the same masks, or their timings mean nothing."""
    lines = []
    same_ids = ours["input_ids"] == trl["input_ids"]
    same_trl = ours["assistant_masks"] == trl["assistant_masks"]
    lines.append(f"input_ids identical to TRL's: {same_ids}; assistant_masks identical to TRL's: {same_trl}")
    if unsloth is not None:
        from_labels = [[int(label != -100) for label in row] for row in unsloth["labels"]]
        agree = sum(a == b for a, b in zip(ours["assistant_masks"], from_labels))
        lines.append(f"Unsloth's labels mark the same tokens in {agree}/{len(from_labels)} conversations")
    return lines


def stage_breakdown(conversations, tokenizer, original: str, repeats: int) -> list[str]:
    """Where the time goes, stage by stage, outside datasets (best of `repeats`)."""
    from templatekit.training.encoding import BatchEncoder
    from templatekit.training.masks import encoding_token_mask
    from templatekit.training.spans import SpanRenderer

    renderer = SpanRenderer(original)
    special = dict(tokenizer.special_tokens_map)
    rendered = [renderer.render(m, **special) for m in conversations]
    texts = [text for text, _ in rendered]
    encoder = BatchEncoder(tokenizer)

    def offsets_route():
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        return [encoding_token_mask(e, spans, len(text)) for e, (text, spans) in zip(encodings, rendered)]

    stages = {
        "render, original template (apply_chat_template, batch)": lambda: tokenizer.apply_chat_template(
            conversations, chat_template=original, tokenize=False
        ),
        "render + spans (SpanRenderer.render, per conversation)": lambda: [
            renderer.render(m, **special) for m in conversations
        ],
        "tokenize the batch (transformers' call, the raw floor's)": lambda: tokenizer(texts, add_special_tokens=False),
        "ids + masks, offsets route (encode_batch, char_to_token)": offsets_route,
        "ids + masks, bytes route (BatchEncoder.encode)": lambda: encoder.encode(rendered),
    }
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(repeats):
        for name, run in stages.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    width = max(map(len, best))
    return [f"  {name:<{width}}  {seconds * 1000:8.1f} ms" for name, seconds in best.items()]


def profile_prepare(dataset: Dataset, tokenizer, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    templatekit_path(dataset, tokenizer)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also print the top N cProfile rows")
    parser.add_argument("--short", action="store_true", help="shorter conversations (~240 tokens instead of ~410)")
    args = parser.parse_args(argv)

    datasets.disable_progress_bars()
    datasets.disable_caching()
    tokenizer = copy.deepcopy(tokenizers_offline.qwen_tokenizer())
    original = (corpus_dir() / "trl" / "qwen2_5.jinja").read_text(encoding="utf-8")
    tokenizer.chat_template = original
    tagged = templatekit.patch_template(original).template
    conversations = make_conversations(args.conversations, long=not args.short)
    dataset = Dataset.from_list([{"messages": messages} for messages in conversations])
    turns = sum(len(m) for m in conversations) - len(conversations)
    print(
        f"{len(conversations)} conversations ({turns} user/assistant messages), Qwen2.5 tokenizer, "
        f"template trl/qwen2_5.jinja; best of {args.repeats} after a warm-up; single process"
    )

    started = time.perf_counter()
    from templatekit.training.spans import SpanRenderer

    renderer = SpanRenderer(original)
    setup = time.perf_counter() - started
    print(f"SpanRenderer setup (patch + verify, once per template): {setup:.3f} s; mode {renderer.mode!r}")

    paths = {
        "raw floor (apply_chat_template per row + one batched tokenize, no datasets)": lambda: raw_floor(
            conversations, tokenizer, original
        ),
        "prepare_dataset": lambda: templatekit_path(dataset, tokenizer),
        "TRL (apply_chat_template per example)": lambda: trl_path(dataset, tokenizer, tagged),
        "floor (render + batched tokenize)": lambda: floor_path(dataset, tokenizer, original),
    }
    unsloth_note = None
    try:
        module, wheel = load_dataset_utils()
        mask_function = module.train_on_responses_only(
            None,
            instruction_part="<|im_start|>user\n",
            response_part=HEADER,
            tokenizer=tokenizer,
            return_function=True,
        )
        paths["Unsloth (render, tokenize, train_on_responses_only)"] = lambda: unsloth_path(
            dataset, tokenizer, original, mask_function
        )
        unsloth_note = f"Unsloth's masking function from {wheel}"
    except Exception as error:  # no network or no wheel: report, do not reimplement
        print(f"(c) Unsloth's path skipped: {error}")

    results = {name: run() for name, run in paths.items()}  # warm-up, and the outputs for the agreement check
    best = {name: float("inf") for name in paths}
    cpu = {name: float("inf") for name in paths}  # CPU seconds of all threads: the work, whatever the load
    for _ in range(args.repeats):
        for name, run in paths.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - started_cpu)

    if unsloth_note:
        print(unsloth_note)
    for line in check_agreement(
        results["prepare_dataset"],
        results["TRL (apply_chat_template per example)"],
        results.get("Unsloth (render, tokenize, train_on_responses_only)"),
    ):
        print(line)
    print()
    width = max(map(len, best))
    print(f"{'':<{width}}  {'wall':>8}     {'conversations/s':>15}  {'CPU (all threads)':>17}")
    for name, seconds in best.items():
        rate = len(conversations) / seconds
        print(f"{name:<{width}}  {seconds * 1000:8.1f} ms  {rate:15.0f}  {cpu[name] * 1000:14.1f} ms")
    ours = best["prepare_dataset"]
    floor = best["floor (render + batched tokenize)"]
    raw = best["raw floor (apply_chat_template per row + one batched tokenize, no datasets)"]
    trl = best["TRL (apply_chat_template per example)"]
    print()
    print(f"prepare_dataset / raw floor: {raw / ours:5.2f}x the raw floor's throughput  (target >= 1)")
    print(f"prepare_dataset / floor in Dataset.map: {floor / ours:5.2f}x")
    print(f"prepare_dataset / TRL   : {trl / ours:5.2f}x TRL's throughput          (target >= 2.5)")
    unsloth = best.get("Unsloth (render, tokenize, train_on_responses_only)")
    if unsloth is not None:
        print(f"prepare_dataset / Unsloth: {unsloth / ours:5.2f}x Unsloth's throughput")
    print(
        f"CPU time: TRL / prepare_dataset {cpu['TRL (apply_chat_template per example)'] / cpu['prepare_dataset']:5.2f}, "
        f"floor / prepare_dataset {cpu['floor (render + batched tokenize)'] / cpu['prepare_dataset']:5.2f}"
    )
    with_setup = ours + setup
    print(
        f"with the one-time setup counted in this run: {floor / with_setup:5.2f}x the floor, {trl / with_setup:5.2f}x TRL"
    )
    print()
    print("stages, outside datasets:")
    print("\n".join(stage_breakdown(conversations, tokenizer, original, args.repeats)))
    if args.profile:
        print(profile_prepare(dataset, tokenizer, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
