"""The shared corpus of real chat templates, worked on once per test session.

Patching a template (and verifying the patch) and tracing its truth are the slow steps of the corpus-wide
tests. `Corpus` does each once per template, on first use, and keeps the result, refusals included (raised again
to every caller): conftest.py hands the one instance to the tests as the session fixture `corpus`. What is kept is
exactly what the library returned, so the tests assert on the same values they would compute themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _paths import corpus_dir, corpus_file

import templatekit
from templatekit.core.pipeline import Analysis, analyse
from templatekit.core.probes import build_probes
from templatekit.core.tags import strip_generation_tags
from templatekit.core.verify import merge_adjacent, render_probe
from templatekit.errors import PatchError, TemplateKitError

#: Every corpus template (`<corpus>/{trl,axolotl,unsloth,hard}/*.jinja`), and its test id (`trl/qwen2_5`).
TEMPLATES = sorted(corpus_dir().glob("*/*.jinja"))
IDS = [f"{path.parent.name}/{path.stem}" for path in TEMPLATES]
#: The tool schema the hand-written tool-call conversations offer (one function, `get_weather(city)`).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


class Corpus:
    """Each template's text, its tags renderer and patch, its delimiter renderer and its truth, computed once."""

    def __init__(self) -> None:
        self._kept: dict[tuple, tuple[bool, Any]] = {}

    def _once(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._kept:
            try:
                self._kept[key] = (True, compute())
            except TemplateKitError as error:  # a refusal is a result; anything else is a bug, raised afresh
                self._kept[key] = (False, error)
        done, value = self._kept[key]
        if not done:
            raise value
        return value

    def text(self, path: Path) -> str:
        return self._once(("text", path), lambda: path.read_text(encoding="utf-8"))

    def renderer(self, path: Path, *, fallback: bool) -> templatekit.SpanRenderer:
        """`SpanRenderer(text, fallback=fallback)`: verified tags (`False`) or learned delimiters (`True`); raises
        the refusal (`PatchError`, `FallbackError`)."""
        return self._once(
            ("renderer", path, fallback), lambda: templatekit.SpanRenderer(self.text(path), fallback=fallback)
        )

    def patch(self, path: Path) -> templatekit.PatchResult:
        """`patch_template(text)` with its defaults (the assistant trained, `retag=True`): the very patch the tags
        renderer made, so each template is patched and verified once (a template whose own tags verify is used as it
        is by the renderer, and patched here). Raises its `PatchError`."""

        def patch() -> templatekit.PatchResult:
            made = self.renderer(path, fallback=False).patched
            return made if made is not None else templatekit.patch_template(self.text(path))

        return self._once(("patch", path), patch)

    def truth(self, path: Path) -> Analysis | None:
        """The verifier's truth: the probes traced and laid out on the template without tags, or None where the
        tracer cannot lay it out (a classifier, no message loop)."""

        def trace() -> Analysis | None:
            try:
                return analyse(strip_generation_tags(self.text(path)), ("assistant",), False)
            except PatchError:
                return None

        return self._once(("truth", path), trace)


@functools.cache
def shared() -> Corpus:
    """The one `Corpus` of the session (conftest.py's `corpus` fixture, and the helpers below)."""
    return Corpus()


def patched(name: str | Path) -> templatekit.PatchResult:
    """`patch_template(text)` of one corpus template (its name under the corpus, or its path), once per session;
    raises its `PatchError`."""
    return shared().patch(name if isinstance(name, Path) else corpus_file(name))


def read(name: str) -> str:
    """One corpus template's text by its name under the corpus (`"trl/qwen2_5.jinja"`)."""
    return shared().text(corpus_file(name))


def patched_and_original(name: str, messages: list[dict], **kwargs) -> tuple[list[str], str]:
    """The corpus template `name` patched (once per session), and `messages` rendered through transformers with
    the patch and with the original: asserts the texts are equal, returns the trained pieces and the text."""
    original, tagged = read(name), patched(name).template
    text, trained = trained_text(tagged, messages, **kwargs)
    plain, _ = trained_text(original, messages, **kwargs)
    assert text == plain
    return trained, text


def trained_text(template: str, messages: list[dict], **kwargs) -> tuple[str, list[str]]:
    """Render with transformers and return the text and the trained pieces (adjacent spans joined)."""
    probe = build_probes()[0]
    probe.messages = messages
    probe.tools = kwargs.pop("tools", None)
    probe.add_generation_prompt = kwargs.pop("add_generation_prompt", False)
    assert not kwargs, f"unknown options {sorted(kwargs)}"
    rendered = render_probe(template, probe, spans=True)
    assert rendered.error is None, rendered.error
    return rendered.text, [rendered.text[s:e] for s, e in merge_adjacent(rendered.spans)]
