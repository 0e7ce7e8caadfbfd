"""prepare_ray_dataset on Ray Data against prepare_dataset(num_proc=None), side by side, on the same data.

    .venv/bin/python benchmarks/ray_scale.py [--conversations 20000] [--repeats 5] [--workers 2]
    .venv/bin/python benchmarks/ray_scale.py --address auto --workers 16 --conversations 2000000   # a cluster

The Qwen2.5 tokenizer built offline and the conversations of benchmarks/masking.py (the issue's shape, ~410 tokens
each), held in memory by both routes (a `datasets.Dataset` and `ray.data.from_items`). Without `--address` Ray
starts here with `--cpus` CPUs (default 2, this machine's). Each repeat runs both routes, one after the other
(noise from other processes falls on both alike); the best time of each counts. Both outputs are checked equal,
row by row.

Each call is timed whole (end to end): for Ray that is its workers starting (each loads the tokenizer and builds
the patched template once), the map, the one materialization, and counting the rows left out (then splitting them
off, when there are any); for `prepare_dataset`, building the Arrow dataset. Ray's time is also broken down from what its workers
report to a Ray actor after each batch: starting (the call to the first batch), mapping (the first batch to the
last: the throughput), finishing (the last batch to the return). Per worker: the rows it prepared, the seconds
it spent in `BatchMasker` calls (what one worker does per second) and its memory: the peak resident set
(ru_maxrss), and the largest private part (RssAnon) and shared part (RssShmem: pages of Ray's object store it read
in place, shared with the store) seen after a batch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import resource
import statistics
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
#: The parts of a worker's resident memory the benchmark reports (Linux: /proc/self/status).
PARTS = {"RssAnon": "private", "RssShmem": "object store pages read in place"}


@ray.remote(num_cpus=0)
class WorkerStats:
    """What each worker reports after each batch: rows, when the call began and ended, peak resident memory."""

    def __init__(self):
        self.workers: dict[int, dict[str, float]] = {}

    def add(self, pid: int, rows: int, began: float, ended: float, memory: dict[str, int]) -> None:
        entry = self.workers.setdefault(pid, {"rows": 0, "seconds": 0.0, "first": began, "last": ended})
        entry["rows"] += rows
        entry["seconds"] += ended - began
        entry["first"], entry["last"] = min(entry["first"], began), max(entry["last"], ended)
        for name, value in memory.items():
            entry[name] = max(entry.get(name, 0), value)

    def take(self) -> dict[int, dict[str, float]]:
        workers, self.workers = self.workers, {}
        return workers


class ReportingMasker(BatchMasker):
    """`BatchMasker` that reports each batch to `WorkerStats` (the benchmark's only change to the Ray route)."""

    stats = None

    def __call__(self, batch, indices=None):
        import os

        began = time.time()
        output = super().__call__(batch, indices)
        ended = time.time()
        self.stats.add.remote(os.getpid(), batch.num_rows, began, ended, memory())
        return output


def memory() -> dict[str, int]:
    """This process's memory, in bytes: its peak resident set (ru_maxrss), and now its private memory (RssAnon)
    and the shared memory it has touched (RssShmem: the blocks of Ray's object store it read, mapped in place)."""
    found = {"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssShmem"):
                    found[name] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: the peak alone
        pass
    return found


def ray_route(rows, tokenizer, args, stats):
    masker = ReportingMasker(tokenizer, id_column="id", on_error="collect")
    masker.stats = stats
    compute = ray.data.ActorPoolStrategy(size=args.workers)
    started = time.time()
    prepared = prepare_ray_dataset(rows, masker, batch_size=args.batch_size, compute=compute)
    ended = time.time()
    workers = ray.get(stats.take.remote())
    first, last = min(w["first"] for w in workers.values()), max(w["last"] for w in workers.values())
    phases = {"starting": first - started, "mapping": last - first, "finishing": ended - last}
    return ended - started, prepared, phases, workers


def datasets_route(rows, tokenizer):
    started = time.perf_counter()
    prepared = prepare_dataset(rows, tokenizer, num_proc=None, progress=False)
    return time.perf_counter() - started, prepared


def check_equal(ray_prepared, prepared) -> None:
    """Every row of the Ray output equals prepare_dataset's row of the same index (ids and masks)."""
    got = {}
    for part in ray.get(ray_prepared.dataset.to_arrow_refs()):
        columns = (part.column(name).to_pylist() for name in ("source_row", "input_ids", "assistant_masks"))
        for row, ids, mask in zip(*columns):
            got[row] = (ids, mask)
    assert len(got) == len(prepared) and ray_prepared.rejected_count == 0, (len(got), len(prepared))
    for index, row in enumerate(prepared):
        assert got[index] == (row["input_ids"], row["assistant_masks"]), index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
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
    count = args.conversations
    conversations = make_conversations(count)
    in_memory = datasets.Dataset.from_list([{"messages": m} for m in conversations])
    on_ray = ray.data.from_items([{"id": i, "messages": m} for i, m in enumerate(conversations)])
    stats = WorkerStats.remote()
    prepare_dataset(in_memory.select(range(100)), tokenizer, progress=False)  # the driver's template, once
    best: dict[str, tuple] = {}
    ratios = []  # each repeat's own ratio, Ray's end to end over prepare_dataset's (the two ran back to back)
    for repeat in range(args.repeats):
        ray_run = ray_route(on_ray, tokenizer, args, stats)
        datasets_seconds, prepared = datasets_route(in_memory, tokenizer)
        if repeat == 0:
            check_equal(ray_run[1], prepared)
        ratios.append(datasets_seconds / ray_run[0])
        phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in ray_run[2].items())
        print(
            f"repeat {repeat + 1}: prepare_ray_dataset {ray_run[0]:.2f} s ({phases}), "
            f"prepare_dataset {datasets_seconds:.2f} s",
            flush=True,
        )
        if ray_run[0] < best.get("ray", (float("inf"),))[0]:
            best["ray"] = (ray_run[0], ray_run[2], ray_run[3])
        best["datasets"] = min(best.get("datasets", float("inf")), datasets_seconds)
        del ray_run, prepared
    ray_seconds, phases, workers = best["ray"]
    datasets_rate = count / best["datasets"]
    ray_rate, mapping_rate = count / ray_seconds, count / phases["mapping"]
    print(f"{count} conversations, best of {args.repeats}, outputs equal row by row:")
    print(
        f"  end to end: prepare_ray_dataset ({args.workers} workers) {ray_rate:.0f} rows/s, "
        f"prepare_dataset(num_proc=None) {datasets_rate:.0f} rows/s; ratio {ray_rate / datasets_rate:.2f}x "
        f"(target >= 0.8); each repeat's own ratio: median {statistics.median(ratios):.2f}x, "
        f"range {min(ratios):.2f}x to {max(ratios):.2f}x; the first repeat's {ratios[0]:.2f}x (the first call "
        f"on the Ray started here)"
    )
    print(
        f"  throughput once started (Ray's mapping, {phases['mapping']:.2f} s): {mapping_rate:.0f} rows/s; "
        f"ratio {mapping_rate / datasets_rate:.2f}x prepare_dataset's end to end; Ray's fixed "
        f"costs: starting {phases['starting']:.2f} s, finishing {phases['finishing']:.2f} s"
    )
    for pid, entry in sorted(workers.items()):
        parts = [f"{label} {entry[name] / GIB:.2f} GiB" for name, label in PARTS.items() if name in entry]
        print(
            f"  worker {pid}: {int(entry['rows'])} rows in {entry['seconds']:.2f} s of BatchMasker calls "
            f"({entry['rows'] / entry['seconds']:.0f} rows/s); peak resident memory {entry['maxrss'] / GIB:.2f} GiB"
            + (f" (at most: {', '.join(parts)})" if parts else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
