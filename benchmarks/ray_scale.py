"""prepare_ray_dataset on Ray Data against prepare_dataset(num_proc=None), side by side, on the same data.

    .venv/bin/python benchmarks/ray_scale.py [--conversations 20000] [--repeats 3] [--workers 2]
    .venv/bin/python benchmarks/ray_scale.py --address auto --workers 16 --conversations 2000000   # a cluster

The Qwen2.5 tokenizer built offline and the conversations of benchmarks/masking.py (the issue's shape, ~410 tokens
each), held in memory by both routes (a `datasets.Dataset` and `ray.data.from_items`). Without `--address` Ray
starts here with `--cpus` CPUs (default 2, this machine's). Each repeat runs both routes, round-robin (noise from
other processes falls on both alike); the best time of each counts. Each call is timed whole: for Ray that is
its workers starting (each loads the tokenizer and builds the patched template once), the map, the one
materialization, and the split into rows prepared and rows left out (counted); for `prepare_dataset`, building
the Arrow dataset. Both outputs are checked equal, row by row.

Per worker it prints the rows it prepared, the time it spent in `BatchMasker` calls (so what one worker does per
second) and its peak resident memory (ru_maxrss), reported by the workers to a Ray actor after each batch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import datasets  # noqa: E402
import ray  # noqa: E402
import tokenizers_offline  # noqa: E402
from _paths import corpus_dir  # noqa: E402
from masking import make_conversations  # noqa: E402

from templatekit import BatchMasker, prepare_dataset  # noqa: E402
from templatekit.integrations.ray import prepare_ray_dataset  # noqa: E402

GIB = 1024**3


@ray.remote(num_cpus=0)
class WorkerStats:
    """What each worker reports after each batch: rows, seconds in the masker, peak resident memory."""

    def __init__(self):
        self.workers: dict[int, dict[str, float]] = {}

    def add(self, pid: int, rows: int, seconds: float, peak: int) -> None:
        entry = self.workers.setdefault(pid, {"rows": 0, "seconds": 0.0, "peak": 0})
        entry["rows"] += rows
        entry["seconds"] += seconds
        entry["peak"] = max(entry["peak"], peak)

    def take(self) -> dict[int, dict[str, float]]:
        workers, self.workers = self.workers, {}
        return workers


class ReportingMasker(BatchMasker):
    """`BatchMasker` that reports each batch to `WorkerStats` (the benchmark's only change to the Ray route)."""

    stats = None

    def __call__(self, batch, indices=None):
        import os

        started = time.perf_counter()
        output = super().__call__(batch, indices)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.stats.add.remote(os.getpid(), batch.num_rows, seconds, peak)
        return output


def ray_route(rows, tokenizer, args, stats):
    masker = ReportingMasker(tokenizer, id_column="id", on_error="collect")
    masker.stats = stats
    compute = ray.data.ActorPoolStrategy(size=args.workers)
    started = time.perf_counter()
    prepared = prepare_ray_dataset(rows, masker, batch_size=args.batch_size, compute=compute)
    return time.perf_counter() - started, prepared


def datasets_route(rows, tokenizer):
    started = time.perf_counter()
    prepared = prepare_dataset(rows, tokenizer, num_proc=None, progress=False)
    return time.perf_counter() - started, prepared


def check_equal(ray_prepared, prepared) -> None:
    """Every row of the Ray output equals prepare_dataset's row of the same index (ids and masks)."""
    table = ray_prepared.dataset.to_arrow_refs()
    got = {}
    for part in ray.get(table):
        for row, ids, mask in zip(
            *(part.column(c).to_pylist() for c in ("source_row", "input_ids", "assistant_masks"))
        ):
            got[row] = (ids, mask)
    assert len(got) == len(prepared) and ray_prepared.rejected_count == 0, (len(got), len(prepared))
    for index, row in enumerate(prepared):
        assert got[index] == (row["input_ids"], row["assistant_masks"]), index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="actors in the pool (a fixed pool)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--address", default=None, help="a Ray cluster (ray.init(address=...)); default: start one")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray started here")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    datasets.disable_caching()
    if args.address:
        ray.init(address=args.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    tokenizer = copy.deepcopy(tokenizers_offline.qwen_tokenizer())
    tokenizer.chat_template = (corpus_dir() / "trl" / "qwen2_5.jinja").read_text(encoding="utf-8")
    conversations = make_conversations(args.conversations)
    in_memory = datasets.Dataset.from_list([{"messages": m} for m in conversations])
    on_ray = ray.data.from_items([{"id": i, "messages": m} for i, m in enumerate(conversations)])
    stats = WorkerStats.remote()
    prepare_dataset(in_memory.select(range(100)), tokenizer, progress=False)  # the driver's template patched once
    best = {"ray": float("inf"), "datasets": float("inf")}
    for repeat in range(args.repeats):
        ray_seconds, ray_prepared = ray_route(on_ray, tokenizer, args, stats)
        datasets_seconds, prepared = datasets_route(in_memory, tokenizer)
        workers = ray.get(stats.take.remote())
        if repeat == 0:
            check_equal(ray_prepared, prepared)
        best["ray"] = min(best["ray"], ray_seconds)
        best["datasets"] = min(best["datasets"], datasets_seconds)
        print(f"repeat {repeat + 1}: prepare_ray_dataset {ray_seconds:.2f} s, prepare_dataset {datasets_seconds:.2f} s")
        for pid, entry in sorted(workers.items()):
            print(
                f"  worker {pid}: {int(entry['rows'])} rows in {entry['seconds']:.2f} s of masker calls "
                f"({entry['rows'] / entry['seconds']:.0f} rows/s), peak resident {entry['peak'] / GIB:.2f} GiB"
            )
    count = args.conversations
    ray_rate, datasets_rate = count / best["ray"], count / best["datasets"]
    print(
        f"{count} conversations, best of {args.repeats}: prepare_ray_dataset ({args.workers} workers) "
        f"{ray_rate:.0f} rows/s, prepare_dataset(num_proc=None) {datasets_rate:.0f} rows/s; "
        f"ratio {ray_rate / datasets_rate:.2f}x (target >= 0.8); outputs equal row by row"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
