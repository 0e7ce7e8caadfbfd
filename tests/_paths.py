"""Where the tests find things outside the repository (the shared template corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def corpus_dir() -> Path:
    """The shared corpus of real chat templates: `<repo>/../shared/corpus/{trl,axolotl,unsloth}/*.jinja`."""
    return REPO_ROOT.parent / "shared" / "corpus"


def corpus_file(relative: str) -> Path:
    """One corpus template (e.g. "trl/qwen2_5.jinja"); fails the test when it is not there (the corpus is
    ../shared/corpus beside the repository, or $TEMPLATEKIT_CORPUS)."""
    path = corpus_dir() / relative
    if not path.is_file():
        pytest.fail(f"corpus template {relative} not found under {corpus_dir()}")
    return path
