"""Fuzz the parser, the patcher and the span renderer: every input ends in a result or a TemplateKitError.

    .venv/bin/python benchmarks/fuzz.py [--minutes 10] [--seed 0] [--jobs N] [--timeout 30] [--memory-gib 2]
        [--dump DIR] [--replay CASE.json]

Hypothesis draws each input in this process: a corpus template (../shared/corpus), as written or as
`patch_template` tags it, left alone a third of the time and otherwise mutated 1-3 times with the mutations of
tests/mutations.py (flip a `-` marker, wrap an output in `if`/`set`/`generation`, delete or duplicate a span, drop
an end tag, move a generation tag) plus one of this file's (insert a snippet of Jinja or odd text); a generated
conversation (system/user/assistant/tool and unusual roles; content as strings, lists of text parts or None beside
tool calls; tool calls with dict or string arguments, several in parallel; reasoning under `reasoning_content` and
`thinking`; odd unicode: special tokens, NUL, BOM, RTL marks, combining marks, emoji, the span markers); tool
schemas; `add_generation_prompt`; and a span policy (`train_on_eot`, `last_response_only`, `train_reasoning`,
`mask_out`).

Each input runs in a forked child under SIGALRM (`--timeout` seconds) and RLIMIT_AS (`--memory-gib` over what the
child maps at fork), through five stages: `syntax.parse_template`, `patch_template`, `check_template`,
`render_with_spans` (tags when the template can be patched, else the delimiter fallback) and `render_with_spans(...,
fallback=True)` (the delimiter fallback). A `TemplateKitError` at a stage is a refusal and the next stage runs;
any other exception is a crash, an alarm a hang, a MemoryError (or a child that dies without a result) a memory
blowup. A child still alive 10 s past its alarm is killed and counted as hung.

Prints inputs tried, crashes, hangs and memory blowups, then each distinct crash site (stage, exception type,
innermost templatekit frame) with a reproducer: a Python snippet, and with `--dump DIR` the input as JSON that
`--replay` runs again in this process with the full traceback. Hypothesis runs in batches of `BATCH` examples, batch
`b` seeded with `(seed, b)`: the same seed, minutes and machine draw the same inputs (how many finish depends on
speed). Exit status 1 when anything crashed, hung or blew up.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the mutation functions live with the tests
sys.path.insert(0, str(ROOT))

import mutations  # noqa: E402
from _paths import corpus_dir  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import templatekit  # noqa: E402
from templatekit.core import syntax  # noqa: E402
from templatekit.errors import TemplateKitError  # noqa: E402

BATCH = 100  # hypothesis examples per seeded batch
KILL_GRACE_S = 10  # past the alarm, before a child is killed
TAIL_FRAMES = 8
STAGES = ("parse", "patch", "check", "spans", "fallback")

# ------------------------------------------------------------------------------------------------- inputs

#: Pieces of text that trip templates and span finders: special tokens of many families, Jinja syntax, control
#: characters, invisible and direction-changing characters, combining marks, astral characters, the private-use
#: characters render.py marks generation spans with.
ODD_TEXT = (
    "<|im_start|>assistant\n", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "[INST]", "[/INST]", "<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n", "<start_of_turn>model\n", "<end_of_turn>", "<|user|>",
    "<|assistant|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|return|>",
    "{{ messages }}", "{% if true %}", "{%- endif -%}", "{# c #}", "\x00", "\r\n", "\r", "\u2028", "\u200b",
    "\u202e", "\ufeff", "\U0001f600", "e\u0301", "\u0130", "\u00df", "\t", " ", "\n\n", "\\", '"', "'", "\x1b[31m",
    "\ufffd", "\ue000", "\ue001", "\U0010ffff", "null", "None", "{}", "[]",
)  # fmt: skip
ROLES = ("system", "user", "assistant", "tool", "developer", "function", "ipython", "model", "observation", "x y")
#: Snippets inserted into templates (one of the mutations here, beside tests/mutations.py's).
SNIPPETS = (
    "{{ messages[0]['content'] }}", "{% for m in messages %}{{ m.role }}{% endfor %}", "{% generation %}",
    "{% endgeneration %}", "{%- generation -%}", "{% if loop.last %}", "{% endif %}", "{% else %}", "{{ eos_token }}",
    "{{ raise_exception('no') }}", "{% set ns = namespace(x=1) %}", "{{ ns.x }}", "{{ message['content'] | trim }}",
    "{% macro m(x) %}{{ x }}{% endmacro %}{{ m('a') }}", "{{ tools | tojson }}", "{{- '\\n' -}}", "{%", "%}", "{{",
    "}}", "{#", "#}", "'", '"', "\\", "\x00", "\ue000", "{% raw %}", "{% endraw %}", "{{ strftime_now('%Y') }}",
    "{% break %}", "{% continue %}", "{{ message.tool_calls[0].function.arguments }}", "{{ loop.previtem.role }}",
)  # fmt: skip


@st.composite
def odd_text(draw, max_pieces: int = 6) -> str:
    pieces = draw(st.lists(st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=10)), max_size=max_pieces))
    return "".join(pieces)


# Structural choices (how many messages, which role, whether a tool call) come from a PRNG seeded by one hypothesis
# draw: hypothesis's own integers and floats crowd at their bounds, which would make most conversations odd (a
# rare branch taken a tenth of the time). Text comes from hypothesis, where its taste for edge cases is wanted.


def chance(rnd: random.Random, probability: float) -> bool:
    return rnd.random() < probability


@st.composite
def contents(draw, rnd, allow_none: bool):
    kind = rnd.choice(("string",) * 6 + ("parts",) * 3 + (("none",) if allow_none else ()))
    if kind == "string":
        return draw(odd_text())
    if kind == "none":
        return None
    parts = []
    for _ in range(rnd.choice((0, 1, 1, 1, 2, 3))):
        part_kind = rnd.choice(("text",) * 8 + ("image", "odd"))
        if part_kind == "text":
            parts.append({"type": "text", "text": draw(odd_text())})
        elif part_kind == "image":
            parts.append({"type": "image", "url": "https://example.com/x.png"})
        else:
            parts.append({"type": draw(odd_text(2)), "text": draw(odd_text(2))})
    return parts


@st.composite
def tool_calls(draw, rnd) -> list[dict]:
    calls = []
    for number in range(rnd.choice((1, 1, 1, 2, 3))):
        if chance(rnd, 0.7):
            values = st.one_of(odd_text(2), st.integers(), st.booleans(), st.none())
            arguments = draw(st.dictionaries(odd_text(2), values, max_size=3))
        else:
            arguments = draw(odd_text(3))  # arguments already serialised (or not JSON at all)
        call = {"type": "function", "function": {"name": draw(odd_text(2)) or "f", "arguments": arguments}}
        if chance(rnd, 0.7):
            call["id"] = f"call{number:05d}"
        calls.append(call)
    return calls


@st.composite
def messages_of(draw, rnd) -> list[dict]:
    messages: list[dict] = []
    if chance(rnd, 0.4):
        messages.append({"role": "system", "content": draw(odd_text())})
    common = chance(rnd, 0.8)  # most conversations alternate user and assistant; the rest draw any role
    for index in range(rnd.choice((1, 2, 2, 3, 4, 4, 5, 6))):
        if common:
            role = ("user", "assistant")[index % 2]
            if role == "user" and index and chance(rnd, 0.2):
                role = "tool"
        else:
            role = rnd.choice(ROLES)
        message: dict = {"role": role}
        if role == "assistant" and chance(rnd, 0.25):
            message["tool_calls"] = draw(tool_calls(rnd))
            message["content"] = draw(contents(rnd, allow_none=True))
        else:
            message["content"] = draw(contents(rnd, allow_none=False))
        if role == "assistant" and chance(rnd, 0.25):
            thought = draw(odd_text())
            message["reasoning_content"] = message["thinking"] = thought
        if role == "tool":
            message["tool_call_id"] = "call00000"
            message["name"] = draw(odd_text(2))
        if chance(rnd, 0.01):
            message["weight"] = rnd.choice((0, 1, 0.5, "1", None))
        messages.append(message)
    if chance(rnd, 0.02):  # something a caller should not pass at all
        messages[rnd.randrange(len(messages))] = rnd.choice(
            ({}, {"role": 3, "content": "x"}, {"role": "user", "content": 7}, "user")
        )
    return messages


TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@st.composite
def tool_lists(draw, rnd):
    kind = rnd.choice(("none", "none", "none", "schema", "schema", "odd"))
    if kind == "none":
        return None
    if kind == "schema":
        return [TOOL_SCHEMA]
    return [{"type": "function", "function": {"name": draw(odd_text(2)), "description": draw(odd_text(3))}}]


@st.composite
def policies(draw, rnd) -> dict:
    policy: dict = {}
    if chance(rnd, 0.3):
        policy["train_on_eot"] = rnd.choice(("all", "last", "none"))
    if chance(rnd, 0.2):
        policy["last_response_only"] = True
    if chance(rnd, 0.2):
        policy["train_reasoning"] = False
    if chance(rnd, 0.2):
        policy["mask_out"] = [rnd.choice(("</think>", "<|im_end|>", "\n", draw(odd_text(2))))]
    if chance(rnd, 0.8):  # what apply_chat_template passes: many templates write them
        policy.update(bos_token="<s>", eos_token="</s>")
    if chance(rnd, 0.2):
        policy["enable_thinking"] = rnd.choice((True, False))
    return policy


def insert_snippet(text: str, choose) -> tuple[str, str]:
    """Insert a snippet of Jinja (or odd text) at any position."""
    snippet = SNIPPETS[choose(len(SNIPPETS))] if choose(3) else ODD_TEXT[choose(len(ODD_TEXT))]
    at = choose(len(text) + 1)
    return text[:at] + snippet + text[at:], f"insert_snippet: {snippet!r} at {at}"


@dataclass
class Case:
    """One input: a template and what is rendered with it."""

    source: str  # corpus path
    base: str  # "original" or "patched"
    template: str
    steps: list[str]
    messages: list
    tools: list | None
    add_generation_prompt: bool
    policy: dict = field(default_factory=dict)  # span policy keywords and template variables (bos_token, …)

    def describe(self) -> str:
        steps = " | ".join(self.steps) if self.steps else "unmutated"
        return f"{self.source} ({self.base}) | {steps}"


def case_strategy(corpus: list[tuple[str, str]], patched: dict[str, str | None]):
    @st.composite
    def cases(draw) -> Case:
        # Template choices through one drawn Random (as tests/test_fuzz.py does): spread over the whole corpus.
        rnd = draw(st.randoms(use_true_random=False))
        name, text = corpus[rnd.randrange(len(corpus))]
        base = "original"
        if rnd.randrange(2) and patched.get(name):
            text, base = patched[name], "patched"
        steps: list[str] = []
        if rnd.randrange(3):
            kinds = [*mutations.MUTATIONS.values(), insert_snippet]
            for _ in range(1 + rnd.randrange(mutations.MAX_STEPS)):
                text, step = kinds[rnd.randrange(len(kinds))](text, rnd.randrange)
                steps.append(step)
        shape = random.Random(draw(st.integers(0, 2**64 - 1)))
        return Case(
            name,
            base,
            text,
            steps,
            draw(messages_of(shape)),
            draw(tool_lists(shape)),
            chance(shape, 0.4),
            draw(policies(shape)),
        )

    return cases()


# --------------------------------------------------------------------------------------------- one input


def stage_calls(case: Case) -> list[tuple[str, object]]:
    """The five stages, in order, as (name, call) pairs."""
    kwargs = dict(case.policy, tools=case.tools, add_generation_prompt=case.add_generation_prompt)
    return [
        ("parse", lambda: syntax.parse_template(case.template)),
        ("patch", lambda: templatekit.patch_template(case.template)),
        ("check", lambda: templatekit.check_template(case.template)),
        ("spans", lambda: templatekit.render_with_spans(case.template, case.messages, **kwargs)),
        ("fallback", lambda: templatekit.render_with_spans(case.template, case.messages, fallback=True, **kwargs)),
    ]


def run_case(case: Case, timeout: float) -> dict:
    """Every stage on one input, in this process; the result as a JSON-able dict."""
    stages: dict[str, str] = {}
    calls = stage_calls(case)
    stage = "start"
    try:
        with mutations.time_limit(timeout):
            for stage, call in calls:
                try:
                    call()
                    stages[stage] = "ok"
                except TemplateKitError:
                    stages[stage] = "refused"
    except mutations.Hung as error:
        return {"outcome": "hung", "stage": stage, "site": mutations.crash_site(error), "tail": _tail(error),
                "stages": stages}  # fmt: skip
    except MemoryError as error:
        return {"outcome": "memory", "stage": stage, "site": mutations.crash_site(error), "tail": _tail(error),
                "stages": stages}  # fmt: skip
    except Exception as error:  # the crashes this fuzzer is looking for
        return {
            "outcome": "crashed",
            "stage": stage,
            "type": type(error).__name__,
            "message": str(error)[:500],
            "site": mutations.crash_site(error),
            "tail": _tail(error),
            "stages": stages,
        }
    return {"outcome": "ok", "stages": stages}


def _tail(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)[-TAIL_FRAMES:]
    return "".join(traceback.format_list(frames)) + f"{type(error).__name__}: {str(error)[:300]}"


def reproducer(case: Case, stage: str) -> str:
    """A Python snippet that runs the crashing stage on the input."""
    call = {
        "parse": "syntax.parse_template(template)",
        "patch": "templatekit.patch_template(template)",
        "check": "templatekit.check_template(template)",
        "spans": "templatekit.render_with_spans(template, messages, **kwargs)",
        "fallback": "templatekit.render_with_spans(template, messages, fallback=True, **kwargs)",
    }.get(stage, "...")
    kwargs = dict(case.policy, tools=case.tools, add_generation_prompt=case.add_generation_prompt)
    return (
        "import templatekit\nfrom templatekit.core import syntax\n"
        f"template = {case.template!r}\nmessages = {case.messages!r}\nkwargs = {kwargs!r}\n{call}\n"
    )


# ------------------------------------------------------------------------------------------ forked children


def _child(work, case: Case, timeout: float, memory_bytes: int, write_fd: int) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        with mutations.memory_cap(memory_bytes):
            result = work(case, timeout)
        payload = json.dumps(result).encode()
    except BaseException as error:  # a MemoryError while reporting, say: still report something
        kind = "memory" if isinstance(error, MemoryError) else "crashed"
        payload = json.dumps({"outcome": kind, "type": type(error).__name__, "message": str(error)[:300],
                              "site": "child", "tail": "", "stage": "?"}).encode()  # fmt: skip
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(payload)
    os._exit(0)


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
    # Under RLIMIT_AS a child that cannot allocate may die before it can say so: counted as a memory blowup.
    return {"outcome": "memory", "type": "ChildDied", "message": why, "site": "child", "tail": "", "stage": "?"}


class Runner:
    """Up to `jobs` forked children at once, each running `work(case, timeout)`; finished ones are handed to
    `on_result(case, result)`."""

    def __init__(self, jobs: int, timeout: float, memory_bytes: int, on_result, work=run_case):
        self.jobs, self.timeout, self.memory_bytes, self.on_result = jobs, timeout, memory_bytes, on_result
        self.work = work
        self.running: dict[int, tuple[Case, int, float, bytearray]] = {}  # read fd -> (case, pid, deadline, data)

    def submit(self, case: Case) -> None:
        while len(self.running) >= self.jobs:
            self.poll(0.5)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(self.work, case, self.timeout, self.memory_bytes, write_fd)
        os.close(write_fd)
        self.running[read_fd] = (case, pid, time.monotonic() + self.timeout + KILL_GRACE_S, bytearray())

    def poll(self, wait: float) -> None:
        ready, _, _ = select.select(list(self.running), [], [], wait)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                self.running[fd][3].extend(chunk)
                continue
            case, pid, _, data = self.running.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            self.on_result(case, _decode(data, status))
        for fd, (case, pid, deadline, _) in list(self.running.items()):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del self.running[fd]
                os.close(fd)
                self.on_result(
                    case, {"outcome": "hung", "site": "killed (alarm did not fire)", "tail": "", "stage": "?"}
                )

    def drain(self) -> None:
        while self.running:
            self.poll(0.5)


# ------------------------------------------------------------------------------------------------- main


def patched_corpus(corpus: list[tuple[str, str]], timeout: float, memory_bytes: int, jobs: int) -> dict:
    """Each corpus template as patch_template tags it (None when refused), each made in a capped child."""
    found: dict[str, str | None] = {}

    def keep(case: Case, result: dict) -> None:
        found[case.source] = result.get("patched")

    def patch_only(case: Case, timeout: float) -> dict:
        try:
            with mutations.time_limit(timeout):
                return {"outcome": "ok", "patched": templatekit.patch_template(case.template).template}
        except BaseException:  # noqa: BLE001 - a corpus template that cannot be patched is used as written
            return {"outcome": "ok", "patched": None}

    runner = Runner(jobs, timeout, memory_bytes, keep, work=patch_only)
    for name, text in corpus:
        runner.submit(Case(name, "original", text, [], [], None, False))
    runner.drain()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="inputs run at once (forked)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per input (SIGALRM)")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="address space an input may add (RLIMIT_AS)")
    parser.add_argument("--dump", type=Path, help="write each crashing, hanging or blowing-up input here as JSON")
    parser.add_argument("--replay", type=Path, help="run one dumped input in this process, with the full traceback")
    args = parser.parse_args()
    memory_bytes = int(args.memory_gib * 2**30)

    if args.replay:
        data = json.loads(args.replay.read_text(encoding="utf-8"))
        case = Case(**data["case"])
        print(f"input: {case.describe()}")
        with mutations.memory_cap(memory_bytes), mutations.time_limit(args.timeout):
            for stage, call in stage_calls(case):
                try:
                    call()
                    print(f"  {stage}: ok")
                except TemplateKitError as error:
                    print(f"  {stage}: refused ({type(error).__name__}: {str(error)[:200]})")
        return 0  # a crash propagates above with its full traceback

    corpus = mutations.load_corpus(corpus_dir())
    if not corpus:
        print(f"no corpus templates under {corpus_dir()}", file=sys.stderr)
        return 2
    started = time.monotonic()
    jobs = max(1, args.jobs)
    patched = patched_corpus(corpus, args.timeout, memory_bytes, jobs)
    prepared = time.monotonic() - started
    print(f"prepared {len(corpus)} corpus templates in {prepared:.0f} s "
          f"({sum(v is not None for v in patched.values())} patched)", file=sys.stderr)  # fmt: skip

    counts = {"ok": 0, "crashed": 0, "hung": 0, "memory": 0}
    stage_counts = {stage: {"ok": 0, "refused": 0} for stage in STAGES}
    kinds = {"unmutated": 0, "mutated": 0}
    sites: dict[tuple[str, str, str], list] = {}
    last_report = [time.monotonic()]

    def on_result(case: Case, result: dict) -> None:
        counts[result["outcome"]] += 1
        kinds["mutated" if case.steps else "unmutated"] += 1
        for stage, verdict in result.get("stages", {}).items():
            stage_counts[stage][verdict] += 1
        if result["outcome"] != "ok":
            key = (result.get("stage", "?"), result.get("type", result["outcome"]), result["site"])
            sites.setdefault(key, []).append((case, result))
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                number = sum(counts.values())
                path = args.dump / f"case_{number:06d}_{result['outcome']}.json"
                path.write_text(json.dumps({"case": asdict(case), "result": result}, ensure_ascii=False, indent=1))
        if time.monotonic() - last_report[0] > 30:
            last_report[0] = time.monotonic()
            total = sum(counts.values())
            print(f"  {total} inputs {counts} {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    runner = Runner(jobs, args.timeout, memory_bytes, on_result)
    deadline = started + args.minutes * 60

    @settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=case_strategy(corpus, patched))
    def one(case: Case) -> None:
        if time.monotonic() < deadline:
            runner.submit(case)

    batch = 0
    while time.monotonic() < deadline:
        seed(args.seed * 1_000_003 + batch)(one)()
        batch += 1
    runner.drain()
    elapsed = time.monotonic() - started

    total = sum(counts.values())
    print(
        f"fuzz: {total:,} inputs tried in {elapsed:.0f} s (seed {args.seed}, {len(corpus)} corpus templates, "
        f"{jobs} jobs, {batch} hypothesis batches): {counts['crashed']} crashes, {counts['hung']} hangs, "
        f"{counts['memory']} memory blowups"
    )
    print(f"  inputs: {kinds['unmutated']:,} corpus templates as written, {kinds['mutated']:,} mutants")
    for stage in STAGES:
        done = stage_counts[stage]
        print(f"  {stage:8} ok {done['ok']:,}, refused (TemplateKitError) {done['refused']:,}")
    for number, ((stage, kind, site), found) in enumerate(sorted(sites.items(), key=lambda kv: -len(kv[1])), 1):
        case, result = found[0]
        print(f"\n[{number}] {result['outcome']}: {kind} in stage {stage} at {site}: {len(found)} input(s)")
        print(f"    input: {case.describe()}")
        if result.get("message"):
            print(f"    message: {result['message']}")
        if result.get("tail"):
            print("    " + result["tail"].replace("\n", "\n    ").rstrip())
        print("    reproducer:\n      " + reproducer(case, stage).replace("\n", "\n      ").rstrip())
    return 1 if counts["crashed"] or counts["hung"] or counts["memory"] else 0


if __name__ == "__main__":
    sys.exit(main())
