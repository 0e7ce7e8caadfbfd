"""Shared fixtures: real tokenizers built offline (see tokenizers_offline.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:  # tests/ imported as a package
    from . import tokenizers_offline
except ImportError:  # tests/ on sys.path (pytest's default rootdir-less layout)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tokenizers_offline


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """Qwen2.5 fast tokenizer (151,665 ids; eos <|im_end|>, pad <|endoftext|>). Shared: only set chat_template."""
    return tokenizers_offline.qwen_tokenizer()


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """Llama 3 fast tokenizer (128,256 ids; bos <|begin_of_text|>, eos <|eot_id|>). Shared: only set chat_template."""
    return tokenizers_offline.llama3_tokenizer()


@pytest.fixture(scope="session")
def mistral_tokenizer():
    """Mistral v3 SentencePiece-BPE fast tokenizer ([INST]/[/INST] special; bos <s>, eos </s>)."""
    return tokenizers_offline.mistral_tokenizer("v3")


@pytest.fixture(scope="session")
def mistral_v1_tokenizer():
    """Mistral v1 SentencePiece-BPE fast tokenizer (32,000 ids; [INST] is plain text)."""
    return tokenizers_offline.mistral_tokenizer("v1")


@pytest.fixture(scope="session")
def corpus():
    """The corpus templates, each patched and verified once and traced once per session (see _corpus.py)."""
    import _corpus

    return _corpus.shared()


@pytest.fixture(scope="session")
def fresh_corpus_run():
    """`templatekit report` over the whole corpus and the verdict on every corpus template, from one fresh
    interpreter under a fixed hash seed other than this process's (determinism_worker.py --report): test_cli reads
    the report, test_determinism compares the verdicts with this process's own."""
    import json
    import os
    import subprocess

    import _corpus
    from _paths import corpus_dir

    if not _corpus.TEMPLATES:
        pytest.fail(f"no corpus templates under {corpus_dir()}")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    worker = Path(__file__).with_name("determinism_worker.py")
    done = subprocess.run(
        [
            sys.executable,
            str(worker),
            "--report",
            str(corpus_dir()),
            "--fallback",
            "refused",
            *map(str, _corpus.TEMPLATES),
        ],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"seed": seed, **json.loads(done.stdout)}


# With pytest-xdist (`make test` runs `-n auto --dist loadgroup`): the tests that read the session corpus run in
# one worker, so that the corpus is patched and traced once per run, not once per worker; every other test stays
# with its module (its module-scoped fixtures, a local Ray for one, are built once).
CORPUS_FIXTURES = frozenset({"corpus", "fresh_corpus_run"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        uses_corpus = CORPUS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.xdist_group("corpus" if uses_corpus else item.nodeid.split("::", 1)[0]))
