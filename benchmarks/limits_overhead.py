"""What the limits on untrusted templates cost: the same work with the limits on and off, side by side.

    .venv/bin/python benchmarks/limits_overhead.py [--repeats 3] [--conversations 2000] [--corpus ../shared/corpus]
    .venv/bin/python benchmarks/limits_overhead.py --steps

Three workloads, each timed in this one process:

  report    the work of `templatekit report ../shared/corpus`: every corpus template patched and verified
            (a tagged one checked, then patched), every refusal included; with `templatekit.core.sandbox` switched
            on (the default: templates compiled by `LimitedEnvironment`, every step and byte counted, a scope per
            template) and off (plain `ImmutableSandboxedEnvironment`s and no scopes, as before the limits existed)
  prepare   `prepare_dataset` on benchmarks/masking.py's generated conversations with the Qwen2.5 tokenizer, on
            and off as above
  isolated  the report work with the limits on, each template in a forked child process under hard limits (as
            the CLI works) against all of it in this process

The modes alternate round-robin, `--repeats` times each after a warm-up (so that noise from other processes
falls on both alike), and the best wall time counts. Target: at most 10 % overhead on each.

`--steps` prints what a step costs here: for loops of a dozen shapes (calls, filters, macros, comparisons, …)
the nanoseconds per step, and the most steps a corpus template's patch takes against the default budget (the
weights in `core/sandbox/codegen.py` and `work.py` aim at 50-200 ns a step, so that the budget's worst case stays
far below the wall-clock backstop).
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


def report_isolated(texts: list[str]) -> None:
    """The report work with each template in a child process, as the CLI runs it."""
    from templatekit.core.sandbox.isolation import run_isolated

    for text in texts:
        try:
            run_isolated(report_work, [text])
        except templatekit.TemplateKitError:
            pass


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(work) -> tuple[float, float]:
    started, started_cpu = time.perf_counter(), _cpu()
    work()
    return time.perf_counter() - started, _cpu() - started_cpu


def side_by_side(name: str, work, repeats: int, other=None, labels: tuple[str, str] = ("off", "on")) -> tuple:
    """Best wall time of `work` with the limits off and on, alternating (or of `other` against `work`, both on)."""
    best = {False: float("inf"), True: float("inf")}
    cpu = {False: float("inf"), True: float("inf")}

    def run(mode: bool) -> tuple[float, float]:
        if other is not None:
            return timed(other if mode else work)
        limits.set_enabled(mode)
        return timed(work)

    for mode in (False, True):  # warm-up: imports, caches, the tokenizer
        run(mode)
    for _ in range(repeats):
        for mode in (False, True):
            wall, used = run(mode)
            best[mode] = min(best[mode], wall)
            cpu[mode] = min(cpu[mode], used)
    limits.set_enabled(True)
    overhead = best[True] / best[False] - 1
    off, on = labels
    print(
        f"{name:<40} {off} {best[False]:7.3f} s   {on} {best[True]:7.3f} s   overhead {overhead * 100:+5.1f} %"
        f"   (CPU {off} {cpu[False]:.3f} s, {on} {cpu[True]:.3f} s; children's included)",
        flush=True,
    )
    return best[False], best[True]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--steps", action="store_true", help="print what a step costs, and the corpus's largest use")
    args = parser.parse_args(argv)
    if args.steps:
        from limits_steps import main as steps

        return steps(args.corpus)

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
        "isolated": side_by_side(
            "report, a child process per template",
            lambda: report_work(texts),
            args.repeats,
            other=lambda: report_isolated(texts),
            labels=("in-process", "isolated"),
        ),
    }
    worst = max(on / off - 1 for off, on in results.values())
    print(f"largest overhead {worst * 100:+.1f} % (target <= 10 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
