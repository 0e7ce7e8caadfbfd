"""No crash, ever: every mutant of a corpus template ends patched or refused with a TemplateKitError.

Hypothesis picks a corpus template (half the time in its patched form, so that tags meet check_template),
then 1-3 mutations from tests/mutations.py and every choice they make (which tag, which span, which
condition), and runs `patch_template` and `check_template` on the result under a per-example alarm and an
address-space cap. Any other exception, or a hang, fails the test with the mutant in the notes.
benchmarks/fuzz_mutants.py runs the same mutations at scale (1,500 mutants) with a per-mutant report.
"""

from __future__ import annotations

import mutations
import pytest
from _corpus import Corpus
from _paths import corpus_dir
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from templatekit.errors import TemplateKitError

CORPUS = mutations.load_corpus(corpus_dir()) if corpus_dir().is_dir() else []
SECONDS_PER_EXAMPLE = 20
MEMORY_CAP_BYTES = 4 * 2**30


def _patched(corpus: Corpus, name: str, text: str) -> str | None:
    """A corpus template as patch_template writes it (the session's patch, see _corpus.py); None when it is refused
    (a crash is a failure)."""
    assert text == corpus.text(corpus_dir() / name)
    try:
        return corpus.patch(corpus_dir() / name).template
    except TemplateKitError:
        return None


@pytest.fixture(scope="module")
def memory_cap():
    """RLIMIT_AS at what the test process maps now plus 4 GiB, for this module's examples; restored after."""
    with mutations.memory_cap(MEMORY_CAP_BYTES) as limit:
        yield limit


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.slow
@given(rnd=st.randoms(use_true_random=False))
def test_mutants_end_patched_or_refused(memory_cap, corpus, rnd):
    # Every choice (corpus file, base, mutations, their tags, spans and conditions) is a `rnd.randrange`
    # that hypothesis records and can shrink. Drawn as `st.integers` instead, the choices crowd near 0:
    # 150 examples then reach about 40 of the 119 templates rather than about 85.
    mutant = mutations.make_mutant(CORPUS, rnd.randrange, lambda name, text: _patched(corpus, name, text))
    shown = mutant.text if len(mutant.text) <= 3000 else mutant.text[:3000] + "\n[... cut]"
    note(f"mutant: {mutant.describe()}\n--- text ---\n{shown}\n--- end ---")
    try:
        with mutations.time_limit(SECONDS_PER_EXAMPLE):
            mutations.exercise(mutant.text)
    except mutations.Hung as error:
        raise AssertionError(f"{error} at {mutations.crash_site(error)}: {mutant.describe()}") from None
