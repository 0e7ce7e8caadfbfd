"""The fast tagged renderer equals transformers' renderer, text and spans, on every patched corpus template."""

from __future__ import annotations

import pytest
from _corpus import IDS, TEMPLATES, patched

import templatekit
from templatekit.core.probes import build_probes
from templatekit.core.syntax import probe_clock
from templatekit.core.verify import merge_adjacent, render_probe
from templatekit.errors import MarkerCollision
from templatekit.training.tagged_render import render_tagged


@pytest.mark.corpus
@pytest.mark.parametrize("path", TEMPLATES, ids=IDS)
def test_same_text_and_spans_as_transformers(corpus, path):
    try:
        tagged = corpus.patch(path).template  # patch_template(text, retag=True)
    except templatekit.PatchError as error:
        assert error.reasons  # refused with a reason; the corpus report lists it
        return
    compared = 0
    for probe in build_probes() + build_probes(blocks=True):
        reference = render_probe(tagged, probe, spans=True)
        if reference.error is not None:
            with pytest.raises(Exception):
                render_tagged(tagged, probe.messages, **probe.render_kwargs())
            continue
        with probe_clock():  # the clock render_probe reads, for templates that write the date
            text, spans = render_tagged(tagged, probe.messages, **probe.render_kwargs())
        assert text == reference.text, probe.name
        assert merge_adjacent(spans) == merge_adjacent(reference.spans), probe.name
        compared += 1
    assert compared


def test_a_conversation_holding_a_marker_character_is_refused_not_misread():
    tagged = templatekit.patch_template(
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    ).template
    for role in ("user", "assistant"):
        with pytest.raises(MarkerCollision):
            render_tagged(tagged, [{"role": role, "content": "a \ue000 b \ue001 c"}])


def test_conversation_is_prepared_like_transformers_prepares_it():
    # gpt-oss reads `thinking`; transformers copies `reasoning_content` there before rendering, and so must we.
    tagged = patched("trl/gptoss.jinja").template
    probe = build_probes()[0]
    probe.messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Four.", "reasoning_content": "Add them."},
    ]
    reference = render_probe(tagged, probe, spans=True)
    with probe_clock():  # gpt-oss writes the date
        text, spans = render_tagged(tagged, probe.messages, **probe.render_kwargs())
    assert "Add them." in text
    assert (text, merge_adjacent(spans)) == (reference.text, merge_adjacent(reference.spans))
