"""prepare_dataset at scale: `num_proc=2` against one process, and a stream of a million conversations in flat memory.

    .venv/bin/python benchmarks/dataset_scale.py [--conversations 20000] [--stream 1000000] [--skip-num-proc]

Both use the Qwen2.5 tokenizer built offline and the conversations of benchmarks/masking.py (the issue's shape,
~410 tokens each).

  num_proc   one `Dataset` of `--conversations` rows prepared with num_proc=None and num_proc=2, side by side
             (best of two each); prints both times and the ratio.
  stream     an `IterableDataset` generated on the fly (`--stream` rows, never held in memory), prepared and read
             to the end; prints the rate and the process's resident memory every tenth of the way and at its peak
             (target: flat, under 1.5 GiB).
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import datasets  # noqa: E402
import tokenizers_offline  # noqa: E402
from _paths import corpus_dir  # noqa: E402
from masking import make_conversations  # noqa: E402

from templatekit.training.dataset import prepare_dataset  # noqa: E402

GIB = 1024**3


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def compare_num_proc(tokenizer, count: int) -> None:
    rows = datasets.Dataset.from_list([{"messages": m} for m in make_conversations(count)])
    best = {}
    for _ in range(2):
        for num_proc in (None, 2):
            started = time.perf_counter()
            prepare_dataset(rows, tokenizer, num_proc=num_proc, progress=False)
            best[num_proc] = min(best.get(num_proc, float("inf")), time.perf_counter() - started)
    print(
        f"{count} conversations: num_proc=None {best[None]:.2f} s, num_proc=2 {best[2]:.2f} s; ratio {best[None] / best[2]:.2f}x"
    )


def stream(tokenizer, count: int) -> None:
    def generate():
        done = 0
        while done < count:  # fresh conversations in blocks, so that nothing but the current block is held
            block = make_conversations(min(10_000, count - done), seed=done)
            for messages in block:
                yield {"messages": messages}
            done += len(block)

    rows = datasets.IterableDataset.from_generator(generate)
    prepared = prepare_dataset(rows, tokenizer, progress=False)
    start_memory = resident_bytes()
    started, seen, tokens, peak = time.perf_counter(), 0, 0, start_memory
    marks = {count * k // 10 for k in range(1, 11)}
    for row in prepared:
        seen += 1
        tokens += len(row["input_ids"])
        if seen % 1000 == 0 or seen in marks:
            peak = max(peak, resident_bytes())
        if seen in marks:
            elapsed = time.perf_counter() - started
            print(
                f"  {seen:>9} rows  {elapsed:7.1f} s  {seen / elapsed:7.0f} rows/s  "
                f"resident {resident_bytes() / GIB:5.2f} GiB"
            )
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"stream of {seen} conversations ({tokens} tokens) in {time.perf_counter() - started:.1f} s; resident memory "
        f"{start_memory / GIB:.2f} GiB at the start, peak {peak / GIB:.2f} GiB sampled, {maxrss / GIB:.2f} GiB "
        "(ru_maxrss, whole run) (target: flat, < 1.5 GiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--stream", type=int, default=1_000_000)
    parser.add_argument("--skip-num-proc", action="store_true")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    datasets.disable_caching()
    tokenizer = copy.deepcopy(tokenizers_offline.qwen_tokenizer())
    tokenizer.chat_template = (corpus_dir() / "trl" / "qwen2_5.jinja").read_text(encoding="utf-8")
    if not args.skip_num_proc:
        compare_num_proc(tokenizer, args.conversations)
    if args.stream:
        stream(tokenizer, args.stream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
