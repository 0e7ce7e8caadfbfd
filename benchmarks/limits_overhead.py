"""What the limits on untrusted templates cost: the same work with the limits on and off, side by side.

    .venv/bin/python benchmarks/limits_overhead.py [--repeats 3] [--conversations 2000] [--corpus ../shared/corpus]

Two workloads, each timed in this one process with `templatekit.core.sandbox` switched on (the default: templates
compiled by `LimitedEnvironment`, every operation counted, a scope per template) and off (the same code with
plain `ImmutableSandboxedEnvironment`s and no scopes, as before the limits existed):

  report   the work of `templatekit report ../shared/corpus`: every corpus template patched and verified
           (a tagged one checked, then patched), every refusal included
  prepare  `prepare_dataset` on benchmarks/masking.py's generated conversations with the Qwen2.5 tokenizer

The modes alternate round-robin, `--repeats` times each after a warm-up (so that noise from other processes
falls on both alike), and the best wall time counts. Target: at most 10 % overhead on each.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import datasets  # noqa: E402
import tokenizers_offline  # noqa: E402
from _paths import corpus_dir  # noqa: E402
from datasets import Dataset  # noqa: E402
from masking import make_conversations  # noqa: E402

import templatekit  # noqa: E402
from templatekit.core import sandbox as limits  # noqa: E402
from templatekit.core.tags import mentions_generation_tag  # noqa: E402


def report_work(texts: list[str]) -> None:
    """What `report` does with each template (without the printing)."""
    for text in texts:
        try:
            if mentions_generation_tag(text):
                if templatekit.check_template(text).ok:
                    continue
            templatekit.patch_template(text)
        except templatekit.TemplateKitError:
            pass  # a refusal costs its time too


def timed(work) -> tuple[float, float]:
    started, started_cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - started, time.process_time() - started_cpu


def side_by_side(name: str, work, repeats: int) -> tuple[float, float]:
    """Best wall time of `work` with the limits off and on, alternating."""
    best = {False: float("inf"), True: float("inf")}
    cpu = {False: float("inf"), True: float("inf")}
    for mode in (False, True):  # warm-up: imports, caches, the tokenizer
        limits.set_enabled(mode)
        work()
    for _ in range(repeats):
        for mode in (False, True):
            limits.set_enabled(mode)
            wall, used = timed(work)
            best[mode] = min(best[mode], wall)
            cpu[mode] = min(cpu[mode], used)
    limits.set_enabled(True)
    overhead = best[True] / best[False] - 1
    print(
        f"{name:<34} off {best[False]:7.3f} s   on {best[True]:7.3f} s   overhead {overhead * 100:+5.1f} %"
        f"   (CPU off {cpu[False]:.3f} s, on {cpu[True]:.3f} s)",
        flush=True,
    )
    return best[False], best[True]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args(argv)

    paths = sorted(args.corpus.glob("**/*.jinja"))
    texts = [path.read_text(encoding="utf-8") for path in paths]
    datasets.disable_progress_bars()
    datasets.disable_caching()
    tokenizer = copy.deepcopy(tokenizers_offline.qwen_tokenizer())
    tokenizer.chat_template = (corpus_dir() / "trl" / "qwen2_5.jinja").read_text(encoding="utf-8")
    dataset = Dataset.from_list([{"messages": messages} for messages in make_conversations(args.conversations)])

    print(f"limits on vs off, best of {args.repeats} after a warm-up, alternating; single process")
    results = {
        "report": side_by_side(f"report ({len(texts)} corpus templates)", lambda: report_work(texts), args.repeats),
        "prepare": side_by_side(
            f"prepare_dataset ({args.conversations} conversations)",
            lambda: templatekit.prepare_dataset(dataset, tokenizer, progress=False),
            args.repeats,
        ),
    }
    worst = max(on / off - 1 for off, on in results.values())
    print(f"largest overhead {worst * 100:+.1f} % (target <= 10 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
