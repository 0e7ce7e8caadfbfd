"""A fingerprint for `prepare_dataset`'s map, instead of `datasets` pickling the tokenizer to hash it.

`datasets` names a map's result by hashing the function with dill, tokenizer included: ~0.1-0.25 s a call,
often more than rendering a thousand conversations. What the result depends on is known here: the input
dataset's fingerprint, the template, the options, the templatekit version and the tokenizer. An in-memory
dataset is never read back from a cache, so its result gets a fresh random fingerprint (what `datasets` does
when it cannot hash); a dataset backed by cache files gets an exact one, so that a re-run finds its cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from typing import Any

# Per tokenizer object: (state stamp, digest). The digest serializes the whole tokenizer (~0.2 s for a 150k
# vocabulary), so it is kept while the tokenizer lives and its stamp (size, special tokens) is unchanged.
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def map_fingerprint(dataset: Any, template: str, options: Mapping[str, Any], tokenizer: Any) -> str | None:
    """The fingerprint of `prepare_dataset`'s result, or None to let `datasets` hash (an option it cannot
    write down exactly, such as a custom fallback object).

    Example:
        >>> from datasets import Dataset
        >>> rows = Dataset.from_list([{"messages": []}])
        >>> len(map_fingerprint(rows, "{{ messages }}", {"max_length": None}, None))
        16
    """
    from datasets.fingerprint import generate_random_fingerprint

    try:
        written = json.dumps(dict(options), sort_keys=True, default=_exact)
    except TypeError:
        return None
    if not dataset.cache_files:
        return generate_random_fingerprint()
    digest = hashlib.sha256()
    for part in (dataset._fingerprint, _version(), template, written, tokenizer_digest(tokenizer)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of everything in `tokenizer` that decides token ids: its backend's full state, and the
    special tokens handed to templates."""
    stamp = (len(tokenizer), json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))
    try:
        known = _DIGESTS.get(tokenizer)
    except TypeError:  # not weakly referable: computed every time
        known = None
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(stamp[1].encode("utf-8"))
    value = digest.hexdigest()
    try:
        _DIGESTS[tokenizer] = (stamp, value)
    except TypeError:
        pass
    return value


@lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("templatekit")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _exact(value: Any) -> Any:
    """Options JSON cannot hold: tuples and sets as lists, a value object (`Policy`, `Limits`) as its class and
    fields; anything else has no exact written form."""
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = f"{type(value).__module__}.{type(value).__qualname__}"  # a subclass's rule differs: so does the name
        return {"class": kind, **{field.name: getattr(value, field.name) for field in dataclasses.fields(value)}}
    raise TypeError(f"no exact form for {type(value).__name__}")
