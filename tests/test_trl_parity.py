"""Parity with TRL's hand-written `*_training.jinja` templates (installed with trl).

Where TRL's copy renders exactly like the original on a probe, the characters it trains are compared with
ours. Invariant 2 of docs/design.md decides differences: we train exactly what the model generates. So we must
never train a character TRL leaves out (TRL's copies are hand-checked), and every character TRL trains
beyond ours must be one our layout says the model does not generate: a header, a marker the template writes
outside the assistant's message, never anyone's content.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trl
from _paths import corpus_dir

from templatekit.core.tags import has_generation_tags
from templatekit.core.verify import render_probe

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
PAIRS = sorted(
    (path.name.replace("_training", ""), path)
    for path in TRL_TEMPLATES.glob("*_training.jinja")
    if (corpus_dir() / "trl" / path.name.replace("_training", "")).exists()
)

pytestmark = pytest.mark.corpus


# Where invariant 2 decides against TRL's copy, the difference is written down here, with what we train beyond it.
DOCUMENTED = {
    "diffusion_gemma.jinja": (
        # After a tool's result the prompt ends with that result (the generation prompt writes nothing there), so
        # the model writes `<|turn>model\n` itself: generated, so trained. TRL's copy leaves that header untrained.
        "<|turn>model",
        # A conversation that ends on a call ends it with the opening of the tool's response, the call's stop
        # token (mid-conversation the same output also writes the result, and training it is optional).
        "<|tool_response>",
    ),
}


def _without(text: str, pieces: tuple[str, ...]) -> str:
    """`text` with every documented piece taken out: what is left is a difference nobody wrote down."""
    for piece in pieces:
        text = text.replace(piece, "")
    return text


def trained_characters(text: str, spans: list[tuple[int, int]]) -> set[int]:
    return {i for start, end in spans for i in range(start, end) if not text[i].isspace()}


def test_trl_ships_training_templates_for_the_corpus():
    assert len(PAIRS) >= 31  # as measured: TRL 1.16 (pinned) ships a training copy of 31 corpus templates


@pytest.mark.parametrize("name,training", PAIRS, ids=[name for name, _ in PAIRS])
def test_differences_from_trl_are_only_what_the_model_does_not_generate(corpus, name, training):
    path = corpus_dir() / "trl" / name
    original = corpus.text(path)
    ours = corpus.patch(path).template  # every template TRL ships a training copy of is patched
    reference = training.read_text(encoding="utf-8")
    assert not has_generation_tags(original)  # so the truth, traced on the template without tags, is the original's
    analysis = corpus.truth(path)
    compared, documented = 0, set()
    for probe in analysis.probes:
        plain = render_probe(original, probe)
        theirs = render_probe(reference, probe, spans=True)
        if plain.error or theirs.error or theirs.text != plain.text or probe.name not in analysis.layouts:
            continue  # TRL's copy changes this rendering: nothing to compare
        mine = render_probe(ours, probe, spans=True)
        text, layout = plain.text, analysis.layouts[probe.name]
        ours_only = trained_characters(text, mine.spans) - trained_characters(text, theirs.spans)
        generated = {i for turn in layout.turns if not turn.optional for i in range(turn.start, turn.end)}
        beyond = "".join(text[i] for i in sorted(ours_only))
        if name in DOCUMENTED and ours_only <= generated:
            assert not _without(beyond, DOCUMENTED[name]), f"{probe.name}: we train {beyond!r} beyond TRL"
            if beyond:
                documented.add(probe.name)
        else:
            assert not ours_only, f"{probe.name}: we train {beyond!r}, TRL does not"
        content = {i for start, end, _ in layout.forbidden for i in range(start, end)}
        for i in trained_characters(text, theirs.spans) - trained_characters(text, mine.spans):
            assert i not in generated and i not in content, (
                f"{probe.name}: TRL trains {text[max(0, i - 10) : i + 10]!r} around {i}, which we leave out"
            )
        compared += 1
    assert compared, "TRL's copy renders differently from the original on every probe"
    assert bool(documented) == (name in DOCUMENTED), "a documented difference that no probe shows, or the reverse"
