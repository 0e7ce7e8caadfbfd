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
