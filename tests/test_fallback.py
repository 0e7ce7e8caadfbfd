"""The delimiter fallback and the tags path against sentinel truth on every corpus template.

Truth is the verifier's: `patcher.analyse` traces each probe conversation (sentinel contents) and lays out
where every trained turn starts and ends; `verify.check_spans` then demands byte-identical text, every
assistant sentinel trained, no system/user/tool sentinel trained, the header out and the end-of-turn
marker in. Both paths of `SpanRenderer` are held to it, the fallback forced with `fallback=True`.
"""

from __future__ import annotations

import pytest
from _paths import corpus_dir

from templatekit import PatchError, SpanRenderer
from templatekit.fallback import Delimiters, FallbackError, derive_delimiters, find_spans
from templatekit.patcher import analyse
from templatekit.policies import ConversationError
from templatekit.rewrite import strip_generation_tags
from templatekit.verify import check_spans

TEMPLATES = sorted(corpus_dir().glob("*/*.jinja"))
IDS = [f"{p.parent.name}/{p.stem}" for p in TEMPLATES]


# Templates the forced fallback does not yet get right against the tracer's truth, and why (strict: a fix
# turns the xfail into a failure, so this list only shrinks). Empty: every corpus template passes.
FALLBACK_KNOWN: dict[str, str] = {}


def _truth(template: str):
    """The verifier's layouts for the probes, or None when the tracer cannot lay the template out."""
    try:
        return analyse(strip_generation_tags(template), ("assistant",), False)
    except PatchError:
        return None


def _problems(renderer: SpanRenderer, analysis) -> list[str]:
    problems, checked = [], 0
    for probe in analysis.probes:
        layout = analysis.layouts.get(probe.name)
        if layout is None:
            continue
        try:
            text, spans = renderer.render(probe.messages, **probe.render_kwargs())
        except ConversationError as error:
            problems.append(f"{probe.name}: {error}")
            continue
        if text != layout.text:
            problems.append(f"{probe.name}: text differs from the original rendering")
            continue
        problems += [f"{probe.name}: {p}" for p in check_spans(layout, spans)]
        checked += 1
    if not checked:
        problems.append("no probe checked")
    return problems


def test_corpus_is_there():
    assert len(TEMPLATES) == 99, f"expected the 99 corpus templates under {corpus_dir()}"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=FALLBACK_KNOWN[i])) if i in FALLBACK_KNOWN else p
        for p, i in zip(TEMPLATES, IDS)
    ],
    ids=IDS,
)
def test_forced_fallback_matches_sentinel_truth(path):
    template = path.read_text()
    analysis = _truth(template)
    try:
        renderer = SpanRenderer(template, fallback=True)
    except FallbackError as error:
        pytest.fail(f"fallback refused: {error}")
    assert renderer.mode == "delimiters"
    if analysis is None:
        pytest.fail("no sentinel truth (the tracer cannot lay the template out)")
    assert _problems(renderer, analysis) == []


@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_tags_path_matches_sentinel_truth(path):
    template = path.read_text()
    analysis = _truth(template)
    try:
        renderer = SpanRenderer(template, fallback=False)
    except PatchError:
        pytest.xfail("not patchable (yet): the fallback covers it")
    assert renderer.mode == "tags"
    assert _problems(renderer, analysis) == []


def test_find_spans_explicit_parts_and_generation_prompt():
    d = Delimiters(("<|im_start|>assistant\n",), "<|im_end|>", ("<|im_start|>user\n",),
                   generation_prompt="<|im_start|>assistant\n<think>\n")
    text = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert find_spans(text, d, add_generation_prompt=True) == []
    no_eot = Delimiters(("### Response:\n",), "", ("### Instruction:\n",))
    text = "### Instruction:\nq\n\n### Response:\nan answer\n\n### Instruction:\nmore"
    assert [text[s:e] for s, e in find_spans(text, no_eot)] == ["an answer"]


def test_fallback_refuses_with_reasons():
    # Every role's text is written by one expression with no delimiter at all: nothing separates turns.
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(FallbackError, match="even the fallback cannot apply"):
        derive_delimiters(template)
    with pytest.raises(FallbackError, match="even the fallback cannot apply"):
        SpanRenderer(template, fallback=True)
