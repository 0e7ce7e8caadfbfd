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


# With pytest-xdist (`make test` runs `-n auto --dist loadfile`): each test module runs in one worker (its
# module-scoped fixtures, a local Ray for one, are built once), and the modules that read the session corpus run
# in one worker together, so that the corpus is patched and traced, and reported from a fresh interpreter
# (`fresh_corpus_run`), once per run rather than once per worker. pytest_collection_modifyitems keeps this list
# whole: a module that reads those fixtures and is not in it stops the run. (Not `--dist loadgroup`: pytest-xdist
# 3.8 groups by renaming `item._nodeid`, which pytest 9.2 no longer reads, so its groups are silently ignored.)
CORPUS_FIXTURES = frozenset({"corpus", "fresh_corpus_run"})
CORPUS_MODULES = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_cli",
        "test_core",
        "test_determinism",
        "test_fallback",
        "test_fuzz",
        "test_render",
        "test_strip",
        "test_trl_parity",
    )
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (`-p no:xdist`), never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class CorpusModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "the corpus modules" if module in CORPUS_MODULES else module

    return CorpusModulesTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    readers = {
        item.nodeid.split("::", 1)[0]
        for item in items
        if CORPUS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    }
    if readers - CORPUS_MODULES:
        raise pytest.UsageError(f"tests/conftest.py: add {sorted(readers - CORPUS_MODULES)} to CORPUS_MODULES")
