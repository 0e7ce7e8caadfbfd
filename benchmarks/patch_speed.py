"""Patch + verify time per corpus template, and the share of it that the truth renders cost.

    .venv/bin/python benchmarks/patch_speed.py [--repeats 3] [--corpus ../shared/corpus]

For every corpus template, in this one process: `patch_template` (parse, trace the probes, read the truth
from the template's own renders, plan, rewrite, verify with transformers' renderer), best of `--repeats`.
Side by side, the same templates' plain renders of the probe battery (what any tool must pay to look at a
template) give the floor. Prints the median and the 90th percentile per template, the slowest five, and the
ratio to the floor. Target: median patch+verify <= 0.25 s per template.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _paths import corpus_dir  # noqa: E402

import templatekit  # noqa: E402
from templatekit.core.probes import build_probes  # noqa: E402
from templatekit.core.syntax import make_environment  # noqa: E402


def best_of(repeats: int, work) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def patch(text: str) -> None:
    try:
        templatekit.patch_template(text)
    except templatekit.TemplateKitError:
        pass  # a refusal costs its time too


def plain_renders(text: str) -> None:
    template = make_environment().from_string(text)
    for probe in build_probes():
        try:
            template.render(messages=probe.messages, **probe.render_kwargs())
        except Exception:  # noqa: BLE001 - a probe the template rejects
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args(argv)
    paths = sorted(args.corpus.glob("*/*.jinja"))
    if not paths:
        print(f"no templates under {args.corpus}", file=sys.stderr)
        return 2
    patch_times, floor_times = {}, {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        patch(text)  # warm-up: imports, jinja's caches
        patch_times[path] = best_of(args.repeats, lambda: patch(text))
        floor_times[path] = best_of(args.repeats, lambda: plain_renders(text))
    times = sorted(patch_times.values())
    median, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
    floor = statistics.median(floor_times.values())
    print(f"{len(paths)} templates, best of {args.repeats}")
    print(f"patch + verify per template: median {median:.3f} s, 90th percentile {p90:.3f} s (target: median <= 0.25 s)")
    print(
        f"plain renders of the probe battery: median {floor:.4f} s; patch+verify / plain renders = {median / floor:.0f}x"
    )
    print("slowest:")
    for path, seconds in sorted(patch_times.items(), key=lambda item: -item[1])[:5]:
        print(f"  {seconds:.3f} s  {path.parent.name}/{path.name}")
    return 0 if median <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
