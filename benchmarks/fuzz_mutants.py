"""No crash, ever: fuzz patch_template/check_template with mutants of the corpus templates.

    .venv/bin/python benchmarks/fuzz_mutants.py [--count 1500] [--seed 0] [--timeout-per-mutant 10]
        [--memory-gib 4] [--jobs N] [--only I] [--shrink] [--dump DIR]

Mutant `i` is made from its own `random.Random(f"{seed}:{i}")`, with the mutation functions of
tests/mutations.py (the ones test_fuzz.py draws through hypothesis): corpus templates are visited round-robin
in a seed-shuffled order, half the time in their patched form, and mutated 1-3 times (flip a `-` marker,
wrap an output in `{% if %}`/`{% set %}`/`{% generation %}`, delete or duplicate a span, drop an end tag,
move a generation tag). Each mutant runs in a forked child under SIGALRM (`--timeout-per-mutant`) and
RLIMIT_AS (`--memory-gib` over what the child maps at fork); a child still alive 10 s past its alarm is
killed. Prints patched / refused (TemplateKitError) / crashed (any other exception, or a dead child) / hung,
then each distinct crash site (exception type and innermost templatekit frame) with its count, one mutant,
its message and traceback tail. `--only I` reruns mutant I in this process with the full traceback;
`--shrink` cuts each distinct crash's mutant down to a small reproducer of the same site; `--dump DIR`
writes the crashing mutants to DIR. Exit status 1 when anything crashed or hung.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the mutation functions live with the tests

import mutations  # noqa: E402
from _paths import corpus_dir  # noqa: E402

import templatekit  # noqa: E402

KILL_GRACE_S = 10  # past the alarm, before a child is killed
TAIL_FRAMES = 6


class Fuzzer:
    def __init__(self, corpus: list[tuple[str, str]], seed: int):
        self.corpus = corpus
        self.seed = seed
        self.order = list(range(len(corpus)))
        random.Random(f"{seed}:order").shuffle(self.order)
        self._patched: dict[str, str | None] = {}

    def patched(self, name: str, text: str) -> str | None:
        """The corpus template as patch_template writes it (None when refused; a crash is left to the mutants)."""
        if name not in self._patched:
            try:
                self._patched[name] = templatekit.patch_template(text).template
            except Exception:
                self._patched[name] = None
        return self._patched[name]

    def mutant(self, index: int) -> mutations.Mutant:
        rng = random.Random(f"{self.seed}:{index}")
        return mutations.make_mutant(
            self.corpus, rng.randrange, self.patched, index=self.order[index % len(self.order)]
        )


def run_mutant(text: str, timeout: float) -> dict:
    """Exercise one mutant in this process; the result as a JSON-able dict."""
    try:
        with mutations.time_limit(timeout):
            return {"outcome": mutations.exercise(text)}
    except mutations.Hung as error:
        return {"outcome": "hung", "site": mutations.crash_site(error), "tail": _tail(error)}
    except Exception as error:  # the crashes this benchmark is looking for
        return {
            "outcome": "crashed",
            "type": type(error).__name__,
            "message": str(error)[:500],
            "site": mutations.crash_site(error),
            "tail": _tail(error),
        }


def _tail(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)[-TAIL_FRAMES:]
    return "".join(traceback.format_list(frames)) + f"{type(error).__name__}: {str(error)[:300]}"


def _child(text: str, timeout: float, memory_bytes: int, write_fd: int) -> None:
    try:
        with mutations.memory_cap(memory_bytes):
            result = run_mutant(text, timeout)
        payload = json.dumps(result).encode()
    except BaseException as error:  # a MemoryError while reporting, say: still report something
        result = {"outcome": "crashed", "type": type(error).__name__, "message": str(error)[:300], "site": "child"}
        payload = json.dumps({**result, "tail": ""}).encode()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(payload)
    os._exit(0)


def run_all(fuzzer: Fuzzer, indices: list[int], timeout: float, memory_bytes: int, jobs: int):
    """Yield (index, mutant, result) for every index, running up to `jobs` forked children at once."""
    pending = list(reversed(indices))
    running: dict[int, tuple[int, mutations.Mutant, int, float, bytearray]] = {}  # read fd -> state
    while pending or running:
        while pending and len(running) < jobs:
            index = pending.pop()
            mutant = fuzzer.mutant(index)  # in the parent: patched bases are computed once and shared
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(mutant.text, timeout, memory_bytes, write_fd)
            os.close(write_fd)
            running[read_fd] = (index, mutant, pid, time.monotonic() + timeout + KILL_GRACE_S, bytearray())
        ready, _, _ = select.select(list(running), [], [], 0.5)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                running[fd][4].extend(chunk)
                continue
            index, mutant, pid, _, data = running.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            yield index, mutant, _decode(data, status)
        for fd, (index, mutant, pid, deadline, data) in list(running.items()):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del running[fd]
                os.close(fd)
                yield index, mutant, {"outcome": "hung", "site": "killed (alarm did not fire)", "tail": ""}


def _decode(data: bytearray, status: int) -> dict:
    if data:
        try:
            return json.loads(data)
        except ValueError:
            pass
    if os.WIFSIGNALED(status):
        why = f"child died by signal {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        why = f"child exited with status {os.WEXITSTATUS(status)} and no result"
    return {"outcome": "crashed", "type": "ChildDied", "message": why, "site": "child", "tail": ""}


def _key(result: dict) -> tuple[str, str]:
    return (result.get("type", "Hung"), result["site"])


def shrink(text: str, key: tuple[str, str], timeout: float, budget_s: float = 120.0) -> str:
    """Greedily delete lines, then characters, while the mutant still crashes at the same site."""
    deadline = time.monotonic() + budget_s

    def same(candidate: str) -> bool:
        result = run_mutant(candidate, timeout)
        return result["outcome"] in ("crashed", "hung") and _key(result) == key

    for unit in ("line", "char"):
        parts = text.splitlines(keepends=True) if unit == "line" else list(text)
        chunk = max(1, len(parts) // 2)
        while chunk >= 1 and time.monotonic() < deadline:
            start, changed = 0, False
            while start < len(parts) and time.monotonic() < deadline:
                candidate = parts[:start] + parts[start + chunk :]
                if candidate and same("".join(candidate)):
                    parts, changed = candidate, True
                else:
                    start += chunk
            if not changed:
                chunk //= 2
        text = "".join(parts)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-per-mutant", type=float, default=10.0, help="seconds (SIGALRM)")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address space a mutant may add (RLIMIT_AS)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once (forked)")
    parser.add_argument("--only", type=int, help="rerun mutant I in this process, printing the full traceback")
    parser.add_argument("--shrink", action="store_true", help="cut each distinct crash down to a small reproducer")
    parser.add_argument("--dump", type=Path, help="write each crashing or hanging mutant to this folder")
    args = parser.parse_args()

    corpus = mutations.load_corpus(corpus_dir())
    if not corpus:
        print(f"no corpus templates under {corpus_dir()}", file=sys.stderr)
        return 2
    fuzzer = Fuzzer(corpus, args.seed)
    memory_bytes = int(args.memory_gib * 2**30)

    if args.only is not None:
        mutant = fuzzer.mutant(args.only)
        print(f"mutant {args.only}: {mutant.describe()}\n--- text ---\n{mutant.text}\n--- end ---")
        with mutations.memory_cap(memory_bytes), mutations.time_limit(args.timeout_per_mutant):
            print("outcome:", mutations.exercise(mutant.text))  # a crash propagates with its full traceback
        return 0

    started = time.monotonic()
    counts = {"patched": 0, "refused": 0, "crashed": 0, "hung": 0}
    sites: dict[tuple[str, str], list] = {}
    for done, (index, mutant, result) in enumerate(
        run_all(fuzzer, list(range(args.count)), args.timeout_per_mutant, memory_bytes, max(1, args.jobs)), 1
    ):
        counts[result["outcome"]] += 1
        if result["outcome"] in ("crashed", "hung"):
            sites.setdefault(_key(result), []).append((index, mutant, result))
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"mutant_{index:05d}.jinja").write_text(mutant.text)
        if done % 100 == 0:
            print(f"  {done}/{args.count} {counts} {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started

    print(f"{args.count} mutants (seed {args.seed}, {len(corpus)} corpus templates) in {elapsed:.0f} s:")
    print("  " + "  ".join(f"{name} {n}" for name, n in counts.items()))
    for number, ((kind, site), found) in enumerate(sorted(sites.items(), key=lambda kv: -len(kv[1])), 1):
        index, mutant, result = found[0]
        print(f"\n[{number}] {kind} at {site}: {len(found)} mutant(s), e.g. --only {index}")
        print(f"    mutant: {mutant.describe()}")
        if result.get("message"):
            print(f"    message: {result['message']}")
        print("    " + result["tail"].replace("\n", "\n    ").rstrip())
        if args.shrink:
            with mutations.memory_cap(memory_bytes):
                small = shrink(mutant.text, (kind, site), args.timeout_per_mutant)
            print(f"    reproducer ({len(small)} chars): {small!r}")
    return 1 if counts["crashed"] or counts["hung"] else 0


if __name__ == "__main__":
    sys.exit(main())
