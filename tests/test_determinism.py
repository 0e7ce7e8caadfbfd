"""Same template, same verdict: patching, verifying and learning delimiters give one result per template.

Probe renders read the clock at one fixed instant (`syntax.probe_clock`), so neither the time of day nor the
date changes a verdict, and nothing that decides a verdict depends on hash order (`PYTHONHASHSEED`).
The corpus runs in a fresh process (determinism_worker.py, through conftest.py's `fresh_corpus_run`), as
`templatekit check` runs in CI, under a fixed hash seed, and each verdict is compared with this process's own
(another seed); the templates that read the clock run again in fresh processes whose clocks move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import determinism_worker
import pytest
from _corpus import TEMPLATES
from _paths import corpus_dir
from transformers.utils.chat_template_utils import render_jinja_template

import templatekit
import templatekit.core.syntax
from templatekit.core.probes import build_probes
from templatekit.core.syntax import PROBE_INSTANT, make_environment, probe_clock
from templatekit.core.verify import render_probe, renders_kept, verify
from templatekit.training.tagged_render import render_tagged

WORKER = Path(__file__).with_name("determinism_worker.py")
CLOCK_TEMPLATES = [path for path in TEMPLATES if "strftime_now" in path.read_text(encoding="utf-8")]
CLOCK_NOTE = "the template reads the clock"
DATED = (
    "{{ 'Today: ' + strftime_now('%Y-%m-%d %H:%M:%S') + '\\n' }}"
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _verdicts(templates: list[Path], *options: str, seed: str = "0") -> dict[str, dict]:
    """What a fresh process says about each template (see determinism_worker.py)."""
    done = subprocess.run(
        [sys.executable, str(WORKER), *map(str, templates), *options],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _in_parallel(calls: list) -> list:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda call: call(), calls))


def _by_template(runs: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """run name → path → verdict, turned round: path → run name → verdict."""
    verdicts: dict[str, dict[str, dict]] = {}
    for name, run in runs.items():
        for path, verdict in run.items():
            verdicts.setdefault(path, {})[name] = verdict
    return verdicts


def _differences(verdicts: dict[str, dict[str, dict]]) -> list[str]:
    """One line per template whose verdict differs between runs: `verdicts` maps path → run name → verdict."""
    lines = []
    for path, runs in verdicts.items():
        (first_name, first), *others = runs.items()
        for name, verdict in others:
            if verdict != first:
                fields = sorted(key for key in {*first, *verdict} if first.get(key) != verdict.get(key))
                lines.append(f"{Path(path).relative_to(corpus_dir())}: {first_name} vs {name} differ in {fields}")
    return lines


def _verdicts_here(corpus, templates: list[Path], fallbacks: str) -> dict[str, dict]:
    """What this process says about each template (its own hash seed, the real clock): the worker's verdict from
    the session's patches and learned delimiters (the very calls the worker makes), written out as it prints it."""
    return json.loads(
        json.dumps(
            {
                str(path): determinism_worker.verdict(
                    str(path),
                    fallbacks,
                    patch=lambda text, path=path: corpus.patch(path),
                    delimiters=lambda text, path=path: corpus.renderer(path, fallback=True).delimiters,
                )
                for path in templates
            }
        )
    )


@pytest.mark.corpus
@pytest.mark.subprocess
def test_the_corpus_gets_one_verdict_under_every_hash_seed(corpus, fresh_corpus_run):
    here = _verdicts_here(corpus, TEMPLATES, "refused")
    fresh = f"a fresh process (PYTHONHASHSEED={fresh_corpus_run['seed']})"
    verdicts = _by_template({"this process": here, fresh: fresh_corpus_run["verdicts"]})
    assert sorted(verdicts) == sorted(map(str, TEMPLATES))
    assert all(len(by_seed) == 2 for by_seed in verdicts.values())
    assert not _differences(verdicts)
    statuses = [verdict["status"] for verdict in here.values()]
    assert statuses.count("patched") > len(TEMPLATES) // 2  # real verdicts, not one error everywhere


# The clock's first reading, and how far it moves on at each later reading: every render of a probe, in
# the trace and in verification, of the original and of the patched template, sees another second, minute
# or day than the one before it.
MOVED_CLOCKS = {
    "a new second at every reading": ("2025-03-04T10:00:00", "1"),
    "a new minute at every reading": ("2025-03-04T10:00:59", "60"),
    "midnight (and new year) at the second reading": ("2024-12-31T23:59:59", "1"),
    "a new day at every reading": ("2025-02-27T23:30:00", "86400"),
}


@pytest.mark.subprocess
@pytest.mark.skipif(not CLOCK_TEMPLATES, reason="the corpus holds no template that reads the clock")
def test_templates_that_read_the_clock_get_one_verdict_whatever_the_time(corpus):
    calls = [
        lambda first=first, step=step: _verdicts(CLOCK_TEMPLATES, "--clock", first, "--step", step)
        for first, step in MOVED_CLOCKS.values()
    ]
    moved = _in_parallel(calls)
    # This process reads the real clock: its verdicts (from the session's patches) are the real clock's.
    runs = {"the real clock": _verdicts_here(corpus, CLOCK_TEMPLATES, "all"), **dict(zip(MOVED_CLOCKS, moved))}
    verdicts = _by_template(runs)
    assert sorted(verdicts) == sorted(map(str, CLOCK_TEMPLATES))
    assert not _differences(verdicts)
    notes = [note for verdict in runs["the real clock"].values() for note in verdict.get("notes", [])]
    assert any(note.startswith(CLOCK_NOTE) for note in notes)


def test_a_render_kept_for_the_next_verification_still_says_it_read_the_clock():
    # One patch verifies the same renders many times (renders_kept): each verification must still note the clock.
    patched = templatekit.patch_template(DATED).template
    probes = build_probes()
    with renders_kept():
        first = verify(DATED, patched, probes, layouts={})
        rendered = [render_probe(DATED, probe) for probe in probes]
        second = verify(DATED, patched, probes, layouts={})
        assert [render_probe(DATED, probe) for probe in probes] == rendered
        assert all(again is kept for again, kept in zip([render_probe(DATED, p) for p in probes], rendered))
    assert first.notes[-1].startswith(CLOCK_NOTE) and second.notes[-1].startswith(CLOCK_NOTE)
    assert second.notes == first.notes
    # Outside renders_kept nothing is kept.
    assert render_probe(DATED, probes[0]) is not render_probe(DATED, probes[0])


def _stopped_clock(monkeypatch, instant: datetime) -> None:
    """The real clock (as templatekit reads it outside probes) reads `instant`."""

    class Stopped(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant

    monkeypatch.setattr(templatekit.core.syntax, "datetime", Stopped)


def test_probe_renders_read_the_fixed_instant_and_user_renders_the_real_clock(monkeypatch):
    _stopped_clock(monkeypatch, datetime(1999, 12, 31, 23, 59, 58))
    messages = [{"role": "user", "content": "hi"}]
    probe = build_probes()[0]
    assert render_probe(DATED, probe).text.startswith("Today: " + f"{PROBE_INSTANT:%Y-%m-%d %H:%M:%S}")
    # The same template, rendered for a user: transformers' renderer and templatekit's own both read the real clock
    # (transformers' own, which the stopped clock does not reach: templatekit never changes transformers' templates).
    before = datetime.now()
    texts, _ = render_jinja_template(conversations=[messages], chat_template=DATED)
    after = datetime.now()
    assert texts[0][len("Today: ") :][:10] in {f"{before:%Y-%m-%d}", f"{after:%Y-%m-%d}"}
    assert render_tagged(DATED, messages)[0].startswith("Today: 1999-12-31 23:59:58")
    text, _ = templatekit.render_with_spans(DATED, messages + [{"role": "assistant", "content": "hello"}])
    assert text.startswith("Today: 1999-12-31 23:59:58")


def test_the_fixed_instant_holds_in_its_own_thread_and_scope_only(monkeypatch):
    _stopped_clock(monkeypatch, datetime(1999, 12, 31, 23, 59, 58))
    template = make_environment().from_string("{{ strftime_now('%Y-%m-%d %H:%M:%S') }}")
    elsewhere = []
    with probe_clock() as clock:
        worker = threading.Thread(target=lambda: elsewhere.append(template.render()))
        worker.start()
        worker.join()
        inside = template.render()
    assert (inside, clock.read) == (f"{PROBE_INSTANT:%Y-%m-%d %H:%M:%S}", True)
    assert elsewhere == ["1999-12-31 23:59:58"]
    assert template.render() == "1999-12-31 23:59:58"


def test_a_template_that_reads_the_clock_is_verified_for_the_fixed_instant_and_says_so():
    result = templatekit.patch_template(DATED)
    assert result.report.ok
    assert any(note.startswith(CLOCK_NOTE) for note in result.report.notes)
    checked = templatekit.check_template(result.template)
    assert checked.ok and any(note.startswith(CLOCK_NOTE) for note in checked.notes)
    undated = templatekit.patch_template(DATED.replace("strftime_now('%Y-%m-%d %H:%M:%S')", "'someday'"))
    assert not any(note.startswith(CLOCK_NOTE) for note in undated.report.notes)
