"""Delimiter fallback: trained spans found by the strings a template writes around each turn.

When a template cannot be patched with generation tags, the trained text can still be found in a
rendering: every trained turn starts after a *response part* (its header, such as the generation prompt)
and ends with the template's *end-of-turn* marker, or, for templates that write none, before the next
*instruction part* (the header of an untrained turn). All three are learned here from renders of the probe
conversations (sentinel contents, see `probes.py`), never from a model's name, and the result is checked
on those same probes with the invariants a patch must meet (DESIGN.md): every generated sentinel of a
trained turn is inside a span, no other sentinel is, no header is, and the end-of-turn marker is.

Known limit, shared with every delimiter method: a conversation whose *content* contains a response part
or the end-of-turn marker verbatim is cut there. Generation tags do not have this weakness, which is why
`SpanRenderer` prefers them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import TemplateKitError
from .layout import GENERATED_KINDS, generation_prompt
from .probes import ASSISTANT, Probe, build_probes
from .verify import render_probe

__all__ = ["Delimiters", "FallbackError", "derive_delimiters", "find_spans", "check_delimiters"]

# A header candidate may be cut from the generation prompt only where a marker or a line ends.
_MARKER_ENDS = ("\n", "|>", "｜>", "]", ":", ">")


class FallbackError(TemplateKitError):
    """Even the delimiter fallback cannot apply to this template; `.reasons` says why.

    Example:
        >>> str(FallbackError(["no trained turn is rendered"]))
        'even the fallback cannot apply: no trained turn is rendered'
    """

    def __init__(self, reasons: Sequence[str]):
        self.reasons = list(reasons)
        super().__init__("even the fallback cannot apply: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class Delimiters:
    """The strings that bound trained turns in a rendering.

    * `response_parts`: a trained turn starts right after one of these (its header).
    * `eot`: the end-of-turn marker closing a trained turn; it is trained. Empty when the template writes
      none, and then a turn ends, less trailing whitespace, where the next instruction or response part
      begins, or where the text ends.
    * `instruction_parts`: headers of untrained turns; a trained turn never runs past one.
    * `reasoning_close`: the marker that closes reasoning inside a trained turn (learned from a probe with
      reasoning; empty when the template does not render reasoning).

    Example:
        >>> d = Delimiters(("<|im_start|>assistant\\n",), "<|im_end|>", ("<|im_start|>user\\n",))
        >>> text = "<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n"
        >>> [text[s:e] for s, e in find_spans(text, d)]
        ['Hello<|im_end|>']
    """

    response_parts: tuple[str, ...]
    eot: str = ""
    instruction_parts: tuple[str, ...] = ()
    # Other end-of-turn markers, when turns close differently (one marker mid-conversation, another last).
    eot_alternatives: tuple[str, ...] = ()
    reasoning_close: str = ""
    # Whitespace the template writes after a header; skipped when a caller's explicit response part lacks it.
    header_space: str = ""
    # What `add_generation_prompt=True` appends; a rendering that ends with it holds no turn there.
    generation_prompt: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)


def _earliest(text: str, needles: Iterable[str], start: int, stop: int) -> tuple[int, str]:
    """The first occurrence in `text[start:stop]` of any needle (the longest on ties), or (-1, "")."""
    best, found = -1, ""
    for needle in needles:
        if not needle:
            continue
        at = text.find(needle, start, stop)
        if at >= 0 and (best < 0 or at < best or (at == best and len(needle) > len(found))):
            best, found = at, needle
    return best, found


def find_spans(
    text: str, delimiters: Delimiters, *, add_generation_prompt: bool = False, stop: int | None = None
) -> list[tuple[int, int]]:
    """The trained character spans of a rendered `text`, found by `delimiters` (scanning `text[:stop]`).

    Each response part opens a span; the span runs to the end of the first end-of-turn marker that begins
    before the next instruction or response part (the marker may be the instruction part itself), or, when
    there is none, to that next part less trailing whitespace.

    Example:
        >>> d = Delimiters(("[/INST]",), "</s>", ("[INST]",))
        >>> text = "<s>[INST] hi [/INST] Hello</s>[INST] more [/INST] Bye</s>"
        >>> [text[s:e] for s, e in find_spans(text, d)]
        [' Hello</s>', ' Bye</s>']
    """
    limit = len(text) if stop is None else stop
    prompt = delimiters.generation_prompt
    if add_generation_prompt and prompt and text.endswith(prompt, 0, limit):
        limit -= len(prompt)  # the open turn the prompt starts is not trained
    spans: list[tuple[int, int]] = []
    position = 0
    while True:
        at, part = _earliest(text, delimiters.response_parts, position, limit)
        if at < 0:
            return spans
        start = at + len(part)
        if delimiters.header_space and text.startswith(delimiters.header_space, start):
            start += len(delimiters.header_space)
        boundary, _ = _earliest(text, delimiters.instruction_parts + delimiters.response_parts, start, limit)
        boundary = limit if boundary < 0 else boundary
        end = -1
        eots = (delimiters.eot, *delimiters.eot_alternatives) if delimiters.eot else ()
        longest = max(map(len, eots), default=0)
        marker, eot = _earliest(text, eots, start, min(limit, boundary + longest))
        if 0 <= marker <= boundary:
            end = marker + len(eot)
        if end < 0:
            end = start + len(text[start:boundary].rstrip())
        if end > start:
            spans.append((start, end))
        position = max(end, boundary if boundary > start else start + 1)


# ---------------------------------------------------------------------------------------------------------
# Learning the delimiters from probe renders


@dataclass
class _Turn:
    role: str
    message: int
    first: int  # first generated (or content) sentinel
    last: int  # end of the last one
    last_kind: str
    pre: str  # text from the previous sentinel to `first`
    post: str  # text from `last` to the next sentinel


@dataclass
class _Rendered:
    probe: Probe
    text: str
    turns: list[_Turn]


def _common_prefix(texts: Sequence[str]) -> str:
    return os.path.commonprefix(list(texts)) if texts else ""


def _common_suffix(texts: Sequence[str]) -> str:
    return _common_prefix([t[::-1] for t in texts])[::-1] if texts else ""


def _turns(probe: Probe, text: str) -> list[_Turn]:
    """Each message's rendered sentinels as a turn, with the text before and after it."""
    located = []  # (start, end, sentinel)
    for sentinel in probe.sentinels:
        at = text.find(sentinel.text)
        while at >= 0:
            located.append((at, at + len(sentinel.text), sentinel))
            at = text.find(sentinel.text, at + 1)
    located.sort(key=lambda item: item[0])
    turns = []
    for index, message in enumerate(probe.messages):
        own = [(s, e, x) for s, e, x in located if x.index == index and x.kind in GENERATED_KINDS]
        if not own:
            continue
        first, last = own[0][0], max(e for _, e, _ in own)
        last_kind = max(own, key=lambda item: item[1])[2].kind
        before = max([e for s, e, x in located if e <= first and x.index != index], default=0)
        after = min([s for s, e, x in located if s >= last and x.index != index], default=len(text))
        turns.append(_Turn(message["role"], index, first, last, last_kind, text[before:first], text[last:after]))
    return turns


def _render_probes(template: str, speakers: tuple[str, ...]) -> tuple[list[_Rendered], str]:
    """Probe renders (plain-string contents first, content blocks when plain strings render no trained turn)."""
    best: list[_Rendered] = []
    for blocks in (False, True):
        rendered = []
        for probe in build_probes(speakers, blocks=blocks):
            result = render_probe(template, probe)
            if result.text is not None:
                rendered.append(_Rendered(probe, result.text, _turns(probe, result.text)))
        texts = {r.probe.name.split("[")[0]: r.text for r in rendered}
        header = ""
        if "ends_on_user" in texts and "generation_prompt" in texts:
            header = generation_prompt(texts["ends_on_user"], texts["generation_prompt"])
        if any(t.role in speakers for r in rendered for t in r.turns):
            return rendered, header
        best = best or rendered
    return best, ""


def _leading_marker(text: str) -> str:
    """`text` up to its first closing `>` or `]` (a marker such as `</s>` or `[|endofturn|]`), or ""."""
    ends = [at for at in (text.find(">"), text.find("]")) if at >= 0]
    marker = text[: min(ends) + 1] if ends else ""
    return marker if marker.strip() == marker and len(marker) >= 2 else ""


def _end_of_turn(ends: list[str]) -> tuple[str, tuple[str, ...]]:
    """The end-of-turn marker(s): what every trained turn writes after its last generated text, less the
    whitespace that follows; when turns close with different markers (one mid-conversation, another at
    the end), each of them."""
    common = _common_prefix(ends).rstrip()
    if not common or common.endswith((">", "]")) or common[-1] not in "<[|":
        if common and not common.endswith((">", "]")) and any(ch.isspace() for ch in common):
            # A shared newline then the start of different headers ("<|end|>\n<"): the marker ends before it.
            common = common[: max(common.rfind(ch) for ch in " \n\t")].rstrip()
        return common, ()
    markers = [_leading_marker(end) for end in ends]
    if not all(markers):
        return "", ()
    ranked = sorted(set(markers), key=lambda m: (-markers.count(m), m))
    return ranked[0], tuple(ranked[1:])


def _opener(prompt: str, instruction: tuple[str, ...]) -> str:
    """What every header begins with (`<|im_start|>`, `<|START_OF_TURN_TOKEN|><|`), when headers share one."""
    core = prompt.strip()
    if not core:
        return ""
    shared = _common_prefix([core, *instruction]) if instruction else ""
    if len(shared) >= 2 and not shared[0].isalnum():
        return shared
    return core[:2] if len(core) > 2 and not core[0].isalnum() and not core[1].isalnum() else ""


def _header_candidates(prompt: str, pres: list[str], role: str) -> list[str]:
    """Response-part candidates, most specific first: the generation prompt (with the trained role's name in
    the assistant's place), its marker-ending prefixes, then the common suffix of the texts before turns."""
    candidates: list[str] = []
    if prompt.strip():
        if role != ASSISTANT:
            prompt = prompt.replace(ASSISTANT, role) if ASSISTANT in prompt else ""
        core = prompt.strip()
        candidates += [prompt, prompt.lstrip(), core]
        candidates += [core[:n] for n in range(len(core) - 1, 2, -1) if core[:n].endswith(_MARKER_ENDS)]
    suffix = _common_suffix(pres)
    if suffix.strip():
        candidates.append(suffix)
        # Cut the previous turn's closing off the front at each marker end, keeping what names the speaker.
        candidates += [suffix[n:] for n in range(1, len(suffix)) if suffix[:n].endswith(_MARKER_ENDS)]
    seen, unique = set(), []
    for candidate in candidates:
        if candidate and candidate.strip() and candidate not in seen:
            seen.add(candidate)
            unique.append(candidate)
    return unique


def _cover(candidates: list[str], pres: list[str]) -> tuple[str, ...]:
    """Candidates, most specific first, until every pre-text contains one of them; a scan prefers the
    longest part matching at a position, so each turn's header is read as fully as it is written."""
    chosen: list[str] = []
    uncovered = list(pres)
    for candidate in candidates:
        if not uncovered:
            break
        if any(candidate in p for p in uncovered):
            chosen.append(candidate)
            uncovered = [p for p in uncovered if candidate not in p]
    return tuple(chosen) if not uncovered else ()


def _instruction_parts(rendered: list[_Rendered], speakers: tuple[str, ...], eot: str) -> tuple[str, ...]:
    """The header of each untrained role: the common end of the text before its turns, less the previous
    turn's closing."""
    parts = []
    roles = {t.role for r in rendered for t in r.turns} - set(speakers)
    for role in sorted(roles):
        pres = [t.pre for r in rendered for t in r.turns if t.role == role]
        suffix = _common_suffix(pres)
        closings = [m for m in (eot, _common_prefix([t.post for r in rendered for t in r.turns if t.role == role]))]
        for closing in closings:
            closing = closing.rstrip()
            if closing and closing in suffix:
                suffix = suffix[suffix.index(closing) + len(closing) :]
        suffix = suffix.lstrip()
        if len(suffix.strip()) >= 2:
            parts.append(suffix)
    return tuple(parts)


def check_delimiters(
    template: str,
    delimiters: Delimiters,
    speakers: tuple[str, ...] = (ASSISTANT,),
    rendered: list[_Rendered] | None = None,
) -> list[str]:
    """Reasons the delimiters miss the invariants on the probe renders (empty when they hold).

    Checked per probe: every generated sentinel of a trained turn lies inside a span, no other sentinel
    does, no span holds text before its turn's first generated sentinel other than whitespace or framing
    the template writes inside the turn, and each span ends with the end-of-turn marker when there is one.
    """
    if rendered is None:
        rendered, _ = _render_probes(template, speakers)
    reasons: list[str] = []
    for r in rendered:
        spans = find_spans(r.text, delimiters, add_generation_prompt=r.probe.add_generation_prompt)
        for sentinel in r.probe.sentinels:
            at = r.text.find(sentinel.text)
            if at < 0:
                continue
            inside = any(s <= at and at + len(sentinel.text) <= e for s, e in spans)
            trained = sentinel.role in speakers and sentinel.kind in GENERATED_KINDS
            if trained and not inside:
                reasons.append(f"probe {r.probe.name!r}: {sentinel.role} {sentinel.kind} is not trained")
            if not trained and any(s < at + len(sentinel.text) and at < e for s, e in spans):
                reasons.append(f"probe {r.probe.name!r}: {sentinel.role} {sentinel.kind} is trained")
        for s, e in spans:
            holders = [t for t in r.turns if t.role in speakers and s <= t.first and t.last <= e]
            # A trained message that renders nothing generated (tool calls the template drops) may still
            # train its end-of-turn marker.
            if not holders and r.text[s:e].strip() not in (delimiters.eot, *delimiters.eot_alternatives):
                reasons.append(f"probe {r.probe.name!r}: {r.text[s:e][:40]!r} is trained outside any trained turn")
            elif delimiters.eot and not r.text[s:e].endswith((delimiters.eot, *delimiters.eot_alternatives)):
                reasons.append(f"probe {r.probe.name!r}: a span does not end with {delimiters.eot!r}")
    return reasons


def derive_delimiters(
    template: str,
    train_roles: Sequence[str] = (ASSISTANT,),
    *,
    response_part: str | Sequence[str] | None = None,
    instruction_part: str | Sequence[str] | None = None,
) -> Delimiters:
    """Learn, and check on the probes, the delimiters that bound the trained turns of `template`.

    Explicit `response_part` / `instruction_part` override the learned ones (as in Unsloth's
    `train_on_responses_only`) and are not checked on the probes (they may name a role the probes do not
    have); the end-of-turn marker is still learned, so it stays trained.
    Raises `FallbackError` saying why when no set of delimiters passes the checks.

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> d = derive_delimiters(template)
        >>> d.response_parts, d.eot
        (('<|im_start|>assistant\\n',), '<|im_end|>')
    """
    speakers = tuple(train_roles) or (ASSISTANT,)
    rendered, prompt = _render_probes(template, speakers)
    if not rendered:
        raise FallbackError(["the template rejects every probe conversation"])
    trained = [t for r in rendered for t in r.turns if t.role in speakers]
    if not trained:
        raise FallbackError(["no trained turn is rendered: the template writes no content of " + "/".join(speakers)])
    ends = [t.post for t in trained if t.last_kind == "content"] or [t.post for t in trained]
    eot, alternatives = _end_of_turn(ends)
    opener = _opener(prompt, _instruction_parts(rendered, speakers, eot))
    if opener and opener in _common_prefix(ends)[1:]:
        # The common text after turns runs into the next header: the marker ends before its opener.
        common = _common_prefix(ends)
        eot, alternatives = common[: common.index(opener, 1)].rstrip(), ()
    # The header's trailing whitespace, for callers whose explicit response part stops before it.
    header_space = prompt[len(prompt.rstrip()) :] if prompt.strip() else ""
    instruction = _instruction_parts(rendered, speakers, eot)
    if opener:
        # A header read from the text before a turn may begin with the previous turn's closing text.
        instruction = tuple(p[p.index(opener) :] if opener in p[1:] else p for p in instruction)
    if instruction_part is not None:
        instruction = (instruction_part,) if isinstance(instruction_part, str) else tuple(instruction_part)
    if response_part is not None:
        parts = (response_part,) if isinstance(response_part, str) else tuple(response_part)
        space = "" if any(p.endswith(header_space) for p in parts) else header_space
        candidates_sets = [parts]
    else:
        space = ""
        candidates_sets = []
        for role in speakers:
            pres = [t.pre for t in trained if t.role == role]
            if pres:
                candidates_sets.append(_cover(_header_candidates(prompt, pres, role), pres))
        candidates_sets = [tuple(p for c in candidates_sets for p in c)]
    reasoning_close = ""
    for r in rendered:
        for turn in r.turns:
            kinds = [s for s in r.probe.sentinels if s.index == turn.message and s.role in speakers]
            thought = next((s.text for s in kinds if s.kind == "reasoning"), None)
            said = next((s.text for s in kinds if s.kind == "content"), None)
            if thought and said and 0 <= r.text.find(thought) < r.text.find(said):
                between = r.text[r.text.find(thought) + len(thought) : r.text.find(said)].strip()
                reasoning_close = reasoning_close or between
    failures: list[str] = []
    for parts in candidates_sets:
        if not parts:
            failures.append("no header is common to the trained turns")
            continue
        delimiters = Delimiters(parts, eot, instruction, alternatives, reasoning_close, space, prompt)
        if response_part is not None:
            # The caller's parts name speakers the probes may not have (a custom role), so they are taken
            # as given, as Unsloth does; only the end-of-turn marker and header spacing come from the probes.
            return delimiters
        problems = check_delimiters(template, delimiters, speakers, rendered)
        if not problems:
            return delimiters
        failures += [f"with response part(s) {list(parts)!r} and end of turn {eot!r}: " + problems[0]] + problems[1:4]
    raise FallbackError(failures)
