"""Mutations of real chat templates, for the no-crash fuzz test (test_fuzz.py) and its benchmark
(benchmarks/fuzz_mutants.py), which import the same functions from here.

Every mutation is `mutation(text, choose) -> (new text, description)`. `choose(n)` returns an integer in
`[0, n)` and is the mutation's only source of randomness: the benchmark passes `random.Random.randrange`,
the test a function drawing from hypothesis (so that hypothesis can shrink the choices). A mutation that
finds nothing to act on returns the text unchanged.

`exercise(text)` is what every mutant is put through: `patch_template`, then `check_template`. Either may
refuse with a `TemplateKitError`; anything else escaping is a crash. `time_limit` and `memory_cap` bound one
mutant's time (SIGALRM) and address space (RLIMIT_AS).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import templatekit
from templatekit.errors import TemplateKitError

Choose = Callable[[int], int]

MAX_SPAN = 200  # longest span of characters `delete_span`/`duplicate_span` cut, in character mode
MAX_TAGS_IN_SPAN = 4  # most tags a tag-aligned span covers

# A tag: an output `{{ … }}`, a statement `{% … %}` or a comment `{# … #}` (a string holding the closing
# delimiter ends the match early; a mutant is allowed to be odd).
TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
END_TAG = re.compile(r"\{%[-+]?\s*end\w*\s*[-+]?%\}")
GENERATION_TAG = re.compile(r"\{%[-+]?\s*(?:end)?generation\s*[-+]?%\}")
CONDITIONS = ("x", "true", "not x", "messages")  # `x` is undefined: falsy, `not x` truthy
SET_NAMES = ("v", "content", "output")  # `content` is a name many templates use themselves
BLOCK_OPENERS = {"if", "for", "set", "macro", "call", "filter", "generation", "raw", "block", "with"}


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _tags(text: str, kinds: str = "{%#") -> list[re.Match]:
    return [m for m in TAG.finditer(text) if m.group()[1] in kinds]


def flip_trim(text: str, choose: Choose) -> tuple[str, str]:
    """Toggle the whitespace-control marker on one side of a tag: `{%` <-> `{%-`, `%}` <-> `-%}` (`+` -> `-`)."""
    tags = _tags(text)
    if not tags:
        return text, "flip_trim: no tag"
    tag = tags[choose(len(tags))]
    opening = choose(2) == 0
    at = tag.start() + 2 if opening else tag.end() - 3  # where the marker is (or would be)
    if text[at] in "-+":
        marker = "-" if text[at] == "+" else ""
        new = text[:at] + marker + text[at + 1 :]
    else:
        at = at if opening else at + 1
        new = text[:at] + "-" + text[at:]
    side = "opening" if opening else "closing"
    return new, f"flip_trim: {side} marker of {_short(tag.group())} at {tag.start()}"


def wrap_if(text: str, choose: Choose) -> tuple[str, str]:
    """Wrap one `{{ output }}` in `{% if cond %}…{% endif %}`."""
    outputs = _tags(text, "{")
    if not outputs:
        return text, "wrap_if: no output"
    output = outputs[choose(len(outputs))]
    condition = CONDITIONS[choose(len(CONDITIONS))]
    wrapped = f"{{% if {condition} %}}{output.group()}{{% endif %}}"
    return (
        text[: output.start()] + wrapped + text[output.end() :],
        f"wrap_if: {_short(output.group())} at {output.start()} in `if {condition}`",
    )


def wrap_set(text: str, choose: Choose) -> tuple[str, str]:
    """Capture one `{{ output }}` in `{% set v %}…{% endset %}` and write `{{ v }}` instead."""
    outputs = _tags(text, "{")
    if not outputs:
        return text, "wrap_set: no output"
    output = outputs[choose(len(outputs))]
    name = SET_NAMES[choose(len(SET_NAMES))]
    wrapped = f"{{% set {name} %}}{output.group()}{{% endset %}}{{{{ {name} }}}}"
    return (
        text[: output.start()] + wrapped + text[output.end() :],
        f"wrap_set: {_short(output.group())} at {output.start()} captured in `{name}`",
    )


def wrap_generation(text: str, choose: Choose) -> tuple[str, str]:
    """Wrap one `{{ output }}` in `{% generation %}…{% endgeneration %}` (tags that are likely wrong)."""
    outputs = _tags(text, "{")
    if not outputs:
        return text, "wrap_generation: no output"
    output = outputs[choose(len(outputs))]
    wrapped = f"{{% generation %}}{output.group()}{{% endgeneration %}}"
    return (
        text[: output.start()] + wrapped + text[output.end() :],
        f"wrap_generation: {_short(output.group())} at {output.start()}",
    )


def _statement(tag: re.Match) -> str:
    """The keyword of a `{% … %}` tag ("" for outputs and comments); `set` with `=` reads as "set=" (no end)."""
    if tag.group()[1] != "%":
        return ""
    words = tag.group()[2:-2].strip("-+ \t\n").split(None, 1)
    keyword = words[0] if words else ""
    return "set=" if keyword == "set" and "=" in tag.group().split("%}")[0] else keyword


def _balanced(tags: list[re.Match]) -> list[tuple[int, int]]:
    """`(first, last)` tag indices of every run of whole statements that opens and closes its own blocks:
    an output, a comment, a one-line statement, or a block from its opening tag to its matching end."""
    runs = []
    for first, tag in enumerate(tags):
        keyword = _statement(tag)
        if keyword.startswith("end") or keyword in ("elif", "else"):
            continue
        depth = 0
        for last in range(first, len(tags)):
            inner = _statement(tags[last])
            if inner in BLOCK_OPENERS:
                depth += 1
            elif inner.startswith("end"):
                depth -= 1
            if depth <= 0:
                break
        if depth == 0:
            runs.append((first, last))
    return runs


def _span(text: str, choose: Choose) -> tuple[int, int]:
    """A span of the source: a third of the time any run of characters, a third a run of whole tags (and the
    text between them), a third one to three balanced statements in a row (so that the mutant may still parse).
    """
    tags = _tags(text)
    mode = choose(3) if tags else 0
    if mode == 1:
        first = choose(len(tags))
        last = first + choose(min(MAX_TAGS_IN_SPAN, len(tags) - first))
        return tags[first].start(), tags[last].end()
    if mode == 2 and (runs := _balanced(tags)):
        first, last = runs[choose(len(runs))]
        ends = {start: end for start, end in runs}
        for _ in range(choose(3)):  # take in the balanced statements that follow
            if last + 1 not in ends:
                break
            last = ends[last + 1]
        return tags[first].start(), tags[last].end()
    start = choose(len(text))
    return start, start + 1 + choose(min(MAX_SPAN, len(text) - start))


def delete_span(text: str, choose: Choose) -> tuple[str, str]:
    """Delete a span of the source."""
    if not text:
        return text, "delete_span: empty text"
    start, end = _span(text, choose)
    return text[:start] + text[end:], f"delete_span: [{start}:{end}] {_short(text[start:end])}"


def duplicate_span(text: str, choose: Choose) -> tuple[str, str]:
    """Write a span of the source twice in a row."""
    if not text:
        return text, "duplicate_span: empty text"
    start, end = _span(text, choose)
    return text[:end] + text[start:end] + text[end:], f"duplicate_span: [{start}:{end}] {_short(text[start:end])}"


def drop_end_tag(text: str, choose: Choose) -> tuple[str, str]:
    """Delete one end tag (`{% endif %}`, `{% endfor %}`, `{% endset %}`, `{% endgeneration %}`, …)."""
    ends = list(END_TAG.finditer(text))
    if not ends:
        return text, "drop_end_tag: no end tag"
    end = ends[choose(len(ends))]
    return text[: end.start()] + text[end.end() :], f"drop_end_tag: {_short(end.group())} at {end.start()}"


def move_generation_tag(text: str, choose: Choose) -> tuple[str, str]:
    """Move one `{% generation %}`/`{% endgeneration %}` tag to another tag boundary (for patched bases)."""
    found = list(GENERATION_TAG.finditer(text))
    if not found:
        return text, "move_generation_tag: no generation tag"
    tag = found[choose(len(found))]
    rest = text[: tag.start()] + text[tag.end() :]
    boundaries = sorted({0, len(rest)} | {p for m in _tags(rest) for p in (m.start(), m.end())})
    at = boundaries[choose(len(boundaries))]
    return rest[:at] + tag.group() + rest[at:], f"move_generation_tag: {_short(tag.group())} {tag.start()} -> {at}"


MUTATIONS: dict[str, Callable[[str, Choose], tuple[str, str]]] = {
    f.__name__: f
    for f in (
        flip_trim,
        wrap_if,
        wrap_set,
        wrap_generation,
        delete_span,
        duplicate_span,
        drop_end_tag,
        move_generation_tag,
    )
}
MAX_STEPS = 3  # mutations stacked on one template


def load_corpus(root: Path) -> list[tuple[str, str]]:
    """`(path relative to root, text)` for every `.jinja` under `root`, sorted by path."""
    return [(str(path.relative_to(root)), path.read_text()) for path in sorted(root.rglob("*.jinja"))]


@dataclass
class Mutant:
    """A corpus template (or its patched form), mutated in `steps`."""

    source: str  # corpus path
    base: str  # "original" or "patched"
    text: str
    steps: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.source} ({self.base}) | " + " | ".join(self.steps)


def make_mutant(
    corpus: list[tuple[str, str]],
    choose: Choose,
    patched: Callable[[str, str], str | None],
    index: int | None = None,
) -> Mutant:
    """Mutate one corpus template (`index`, else chosen) 1 to MAX_STEPS times.

    Half the time the mutations start from the template as `patched(name, text)` returns it (None: the
    template cannot be patched, and the original is used), so that tagged templates meet `check_template`.
    """
    name, text = corpus[choose(len(corpus)) if index is None else index]
    base = "original"
    if choose(2) == 1 and (tagged := patched(name, text)) is not None:
        text, base = tagged, "patched"
    mutant = Mutant(name, base, text)
    kinds = list(MUTATIONS)
    for _ in range(1 + choose(MAX_STEPS)):
        mutant.text, step = MUTATIONS[kinds[choose(len(kinds))]](mutant.text, choose)
        mutant.steps.append(step)
    return mutant


def exercise(text: str) -> str:
    """Patch and check `text`; return "patched" or "refused" (by `patch_template`).

    Only a `TemplateKitError` is an allowed refusal; any other exception propagates. `check_template` runs
    on every mutant (it only parses a template without tags).
    """
    try:
        templatekit.patch_template(text)
        outcome = "patched"
    except TemplateKitError:
        outcome = "refused"
    try:
        templatekit.check_template(text)
    except TemplateKitError:
        pass
    return outcome


class Hung(BaseException):
    """Raised by `time_limit` when time runs out: a BaseException, so `except Exception` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `Hung` in the block after `seconds` of wall time (SIGALRM; main thread only)."""

    def _expired(signum, frame):
        raise Hung(f"no result after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    """This process's current virtual size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_cap(extra_bytes: int):
    """Cap the address space (RLIMIT_AS) at what the process maps now plus `extra_bytes`; restore after.

    Relative rather than absolute, so that a process that already maps a lot (a pytest run that imported
    torch) is not starved: the cap bounds what one mutant may add. Yields the limit (None where there is no
    /proc to read the current size from, and nothing is capped).
    """
    previous = resource.getrlimit(resource.RLIMIT_AS)
    try:
        limit = _address_space() + extra_bytes
    except OSError:  # no /proc (not Linux): leave the limit alone
        yield None
        return
    if previous[1] != resource.RLIM_INFINITY:
        limit = min(limit, previous[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, previous[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def crash_site(error: BaseException) -> str:
    """`file:line` of the innermost traceback frame inside templatekit (else the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    ours = [f for f in frames if f"{os.sep}templatekit{os.sep}" in f.filename]
    frame = (ours or frames)[-1]
    filename = frame.filename
    if f"{os.sep}templatekit{os.sep}" in filename:
        filename = "templatekit" + filename.rsplit(f"{os.sep}templatekit", 1)[1]
    return f"{filename}:{frame.lineno} ({frame.name})"
