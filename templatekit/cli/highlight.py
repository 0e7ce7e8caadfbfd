"""See what a template trains: a conversation rendered with the trained characters (and tokens) marked.

`render_conversation` renders one conversation through `templatekit.training.spans` (generation tags when the template
can be patched, the delimiter fallback otherwise), and, given a tokenizer, splits the text into its tokens.
`to_rich` draws it for a terminal, `to_plain` for a pipe, and `to_html` writes a self-contained page (inline
CSS, no scripts, no external assets) in which every trained run of characters is a `<span class="trained">`
and, with a tokenizer, every token is a `<span class="tok">` of its own.
"""

from __future__ import annotations

import html
import os
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.probes import SPECIAL_TOKENS
from ..core.sandbox import DEFAULT
from ..core.verify import merge_adjacent
from ..errors import ConversationError, TemplateSourceError
from ..sources import read_json_file
from ..sources.reading import file_kind
from ..training.masks import spans_to_token_mask
from ..training.spans import SpanRenderer

__all__ = [
    "DEMO_CONVERSATIONS",
    "Rendering",
    "Token",
    "load_messages",
    "load_tokenizer",
    "render_conversation",
    "special_tokens",
    "summary",
    "to_html",
    "to_plain",
    "to_rich",
]

_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
_SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
_ASK = {"role": "user", "content": "What's the weather in Paris?"}
_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}
_RESULT = {"role": "tool", "name": "get_weather", "content": "18°C, sunny"}
_ANSWER = {"role": "assistant", "content": "It is 18°C and sunny in Paris."}
_THANKS = {"role": "user", "content": "Thanks! Should I take an umbrella?"}
_NO = {"role": "assistant", "content": "No need: no rain is expected today."}
_ANSWER_PLAIN = {"role": "assistant", "content": "I cannot look it up, but Paris in spring is usually mild."}

#: Built-in conversations for `show` without `--messages`, richest first: the first one a template renders is
#: used (many templates reject tool turns, or a system message).
DEMO_CONVERSATIONS: list[tuple[str, list[dict], list[dict] | None]] = [
    (
        "system, user, tool call, tool result, answer",
        [_SYSTEM, _ASK, _CALL, _RESULT, _ANSWER, _THANKS, _NO],
        [_WEATHER_TOOL],
    ),
    ("system and two exchanges", [_SYSTEM, _ASK, _ANSWER_PLAIN, _THANKS, _NO], None),
    ("two exchanges", [_ASK, _ANSWER_PLAIN, _THANKS, _NO], None),
]


@dataclass(frozen=True)
class Token:
    """One token of the rendered text: its id, its `[start, end)` characters, whether its mask is 1, and whether it
    is a media token (an image's, with a processor: never trained)."""

    id: int
    piece: str
    start: int
    end: int
    trained: bool
    media: bool = False


@dataclass
class Rendering:
    """A rendered conversation: text, trained character spans, how they were found, and optional tokens."""

    text: str
    spans: list[tuple[int, int]]
    mode: str  # "tags" (verified generation tags) or "delimiters" (the fallback)
    conversation: str = "your conversation"
    tokens: list[Token] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trained_characters(self) -> int:
        return sum(end - start for start, end in self.spans)


# ------------------------------------------------------------------------------------------------------ input


def load_messages(path: str | Path) -> tuple[list[dict], list[dict] | None]:
    """A conversation from a JSON file: a list of messages, or `{"messages": [...], "tools": [...]}`.

    Raises `TemplateSourceError` naming the file (and line and column for invalid JSON).

    Example:
        messages, tools = load_messages("conversation.json")
    """
    path = Path(path)
    data = read_json_file(path)  # bounded: size, nesting, encoding; errors name the file, line and column
    tools = None
    if isinstance(data, dict):
        data, tools = data.get("messages"), data.get("tools")
    if not (isinstance(data, list) and data and all(isinstance(m, dict) and "role" in m for m in data)):
        raise TemplateSourceError(
            'expected a non-empty list of messages with a "role" each, or {"messages": [...], "tools": [...]}',
            source=str(path),
        )
    if tools is not None and not isinstance(tools, list):
        raise TemplateSourceError('"tools" must be a list of tool schemas', source=str(path))
    return data, tools


def load_tokenizer(source: str | Path) -> Callable[[str], list[tuple[int, str, int, int]]]:
    """A function that splits text into `(id, piece, start, end)` tokens, from a `tokenizer.json` file or a local
    tokenizer folder (a `tokenizer.json` in it, else whatever transformers' `AutoTokenizer` can load offline).

    Example:
        encode = load_tokenizer("model/tokenizer.json")
        encode("<|im_start|>user")
        # [(151644, '<|im_start|>', 0, 12), (872, 'user', 12, 16)]
    """
    path = Path(source)
    file = path / "tokenizer.json" if path.is_dir() else path
    if os.path.exists(file) and not file.is_file() and not file.is_dir():  # a pipe or a device: never opened
        raise TemplateSourceError(f"{file_kind(os.stat(file).st_mode)}, not a tokenizer file", source=str(file))
    if file.is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the tokenizers library raises bare Exceptions for malformed files
            raise TemplateSourceError(f"not a tokenizer.json: {exc}", source=str(file)) from None

        def encode(text: str) -> list[tuple[int, str, int, int]]:
            encoding = tokenizer.encode(text, add_special_tokens=False)
            return [(i, t, s, e) for i, t, (s, e) in zip(encoding.ids, encoding.tokens, encoding.offsets)]

        return encode
    if not path.is_dir():
        raise TemplateSourceError("no such tokenizer file or folder", source=str(path))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        raise TemplateSourceError(f"cannot load a tokenizer: {exc}", source=str(path)) from None

    def encode_auto(text: str) -> list[tuple[int, str, int, int]]:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        return [(i, p, s, e) for i, p, (s, e) in zip(ids, pieces, encoding["offset_mapping"])]

    return encode_auto


def special_tokens(folder: Path | None) -> dict[str, str]:
    """`bos_token`, `eos_token`, … as the model's tokenizer_config.json names them (what apply_chat_template
    passes to the template); the probes' stand-ins where there is no config."""
    found = dict(SPECIAL_TOKENS)
    config = folder / "tokenizer_config.json" if folder is not None else None
    if config is None or not config.is_file():
        return found
    try:
        data = read_json_file(config)
    except TemplateSourceError:
        return found
    if not isinstance(data, dict):
        return found
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = data.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            found[key] = value
    return found


# -------------------------------------------------------------------------------------------------- rendering


def render_conversation(
    template: str,
    messages: Sequence[Mapping] | None = None,
    *,
    tools: list | None = None,
    add_generation_prompt: bool = False,
    tokenizer: Callable[[str], list[tuple[int, str, int, int]]] | None = None,
    fallback: bool | None = None,
    max_steps: int | None = DEFAULT,
    max_memory: int | str | None = DEFAULT,
    timeout: float | None = DEFAULT,
    **template_kwargs: Any,
) -> Rendering:
    """Render `messages` (the first built-in demo the template accepts when None) and find the trained spans:
    from verified generation tags when the template can be patched, else (or with `fallback=True`) from
    delimiters.

    Raises `PatchError`/`FallbackError` when neither generation tags nor delimiters can be found for the
    template, `ConversationError` when the template rejects the conversation, and `TemplateLimitError` when
    it goes past `max_steps`, `max_memory` bytes or the `timeout` backstop (`templatekit.core.sandbox`).

    Example:
        >>> from templatekit import get_template
        >>> shown = render_conversation(get_template("chatml"), [{"role": "user", "content": "Hi"},
        ...                                                      {"role": "assistant", "content": "Hello!"}])
        >>> shown.mode, [shown.text[s:e] for s, e in shown.spans]
        ('tags', ['Hello!<|im_end|>'])
    """
    # The tags hold under every setting of the template's switches: `enable_thinking=False` goes to the render.
    renderer = SpanRenderer(template, fallback=fallback, max_steps=max_steps, max_memory=max_memory, timeout=timeout)
    notes = [f"generation tags could not be used: {reason}" for reason in (renderer.reasons or [])[:3]]
    if messages is not None:
        candidates = [("your conversation", list(messages), tools)]
    else:
        candidates = DEMO_CONVERSATIONS
    last_error: Exception | None = None
    for name, conversation, conversation_tools in candidates:
        try:
            text, spans = renderer.render(
                conversation, tools=conversation_tools, add_generation_prompt=add_generation_prompt, **template_kwargs
            )
        except ConversationError as error:
            last_error = error
            continue
        rendering = Rendering(text, merge_adjacent(spans), renderer.mode, name, notes=notes)
        if tokenizer is not None:
            encoded = tokenizer(text)
            mask = spans_to_token_mask([(s, e) for _, _, s, e in encoded], rendering.spans)
            rendering.tokens = [Token(i, p, s, e, bool(m)) for (i, p, s, e), m in zip(encoded, mask)]
        return rendering
    assert last_error is not None
    raise last_error


def _segments(rendering: Rendering) -> list[tuple[int | None, int, int, bool]]:
    """The text cut at every span edge and token edge: `(token index or None, start, end, trained)`.

    A character belongs to the last token that starts at or before it and ends after it (tokens that share
    characters, such as the byte pieces of one emoji, show as one); characters outside every token get None.
    """
    text = rendering.text
    tokens = sorted((t.start, t.end, i) for i, t in enumerate(rendering.tokens or []) if t.end > t.start)
    cuts = {0, len(text)}
    for start, end in rendering.spans:
        cuts |= {start, end}
    for start, end, _ in tokens:
        cuts |= {start, end}
    starts = [start for start, _, _ in tokens]
    segments = []
    ordered = sorted(c for c in cuts if 0 <= c <= len(text))
    for start, end in zip(ordered, ordered[1:]):
        at = bisect_right(starts, start) - 1
        owner = tokens[at][2] if at >= 0 and start < tokens[at][1] else None
        trained = any(s <= start and end <= e for s, e in rendering.spans)
        segments.append((owner, start, end, trained))
    return segments


def summary(rendering: Rendering) -> str:
    """One line: which conversation, how the spans were found, and how much is trained.

    Example:
        >>> summary(Rendering("Q: hi A: yo</s>", [(9, 15)], "tags", "demo"))
        'demo; trained spans from verified generation tags: 6 of 15 characters in 1 spans'
    """
    how = "verified generation tags" if rendering.mode == "tags" else "delimiter fallback"
    line = (
        f"{rendering.conversation}; trained spans from {how}: {rendering.trained_characters} of "
        f"{len(rendering.text)} characters in {len(rendering.spans)} spans"
    )
    if rendering.tokens is not None:
        line += f"; {sum(t.trained for t in rendering.tokens)} of {len(rendering.tokens)} tokens trained"
        media = sum(t.media for t in rendering.tokens)
        line += f", {media} media tokens (never trained)" if media else ""
    return line


def _runs(rendering: Rendering) -> list[tuple[int | None, int, int, bool, bool, int]]:
    """`_segments` with each segment's media flag, and a run of identical whole media tokens (an image's hundreds of
    `<image>`) folded into its first one with a count: `(owner, start, end, trained, media, count)`."""
    tokens = rendering.tokens or []
    runs: list[tuple[int | None, int, int, bool, bool, int]] = []
    reach = -1  # where the last folded run of media tokens ends
    for owner, start, end, trained in _segments(rendering):
        media = owner is not None and tokens[owner].media
        whole = media and (start, end) == (tokens[owner].start, tokens[owner].end)
        if whole and runs and runs[-1][4] and runs[-1][0] != owner and reach == start:
            last = runs[-1]
            if rendering.text[last[1] : last[2]] == rendering.text[start:end]:
                runs[-1] = (*last[:5], last[5] + 1)
                reach = end
                continue
        runs.append((owner, start, end, trained, media, 1))
        reach = end
    return runs


# ----------------------------------------------------------------------------------------------------- output


#: Token shades by (trained, odd token), for terminals of 256 colours or more, and for 16-colour ones (where every
#: grey is the same "bright black", so one of the two untrained shades is the terminal's own background).
_SHADES = {
    (True, 0): "black on green3",
    (True, 1): "black on dark_sea_green2",
    (False, 0): "on grey19",
    (False, 1): "on grey30",
}
_SHADES_16 = {
    (True, 0): "black on green",
    (True, 1): "black on bright_green",
    (False, 0): "",
    (False, 1): "on bright_black",
}
#: Media tokens (an image's), in either palette.
_MEDIA_SHADES = ("black on plum2", "black on orchid2")
_MEDIA_SHADES_16 = ("black on magenta", "black on bright_magenta")


def to_rich(rendering: Rendering, color_system: str | None = "truecolor") -> Any:
    """A `rich.text.Text`: trained characters on green, others plain; with tokens, alternate shades mark where
    each token starts (trained and untrained tokens alike), and the tokens whose mask is 1 are underlined.
    `color_system` is the terminal's (`rich.console.Console.color_system`): on a 16-colour one ("standard",
    "windows") the shades are chosen among its colours, which tell them apart.

    Example:
        >>> from rich.console import Console
        >>> console = Console()
        >>> console.print(to_rich(rendering, console.color_system))  # doctest: +SKIP
    """
    from rich.text import Text

    out = Text()
    few = color_system in ("standard", "windows")
    shades, media_shades = (_SHADES_16, _MEDIA_SHADES_16) if few else (_SHADES, _MEDIA_SHADES)
    for owner, start, end, trained, media, count in _runs(rendering):
        piece = rendering.text[start:end] + (f"×{count}" if count > 1 else "")
        if rendering.tokens is None:
            out.append(piece, style=shades[(True, 0)] if trained else "")
            continue
        style = shades[(trained, owner % 2)] if owner is not None else (shades[(True, 0)] if trained else "")
        style = media_shades[owner % 2] if media else style
        if owner is not None and rendering.tokens[owner].trained:
            style += " underline"
        # A newline token would be invisible: show a return sign before the line break.
        out.append(piece.replace("\n", "↵\n") if owner is not None else piece, style=style)
    return out


def to_plain(rendering: Rendering) -> str:
    """The text for a pipe or a file: trained runs between `⟦` and `⟧`, media tokens (with a processor) between `⟪`
    and `⟫`, a run of one repeated media token written once with its count (`<image>×64`), token starts (with
    tokens) marked `¦`.

    Example:
        >>> to_plain(Rendering("Q: hi A: yo</s>", [(9, 15)], "tags"))
        'Q: hi A: ⟦yo</s>⟧'
        >>> tokens = [Token(1, "Q:", 0, 2, False), Token(7, "<i>", 2, 5, False, True), Token(7, "<i>", 5, 8, False, True),
        ...           Token(2, "A", 8, 9, True)]
        >>> to_plain(Rendering("Q:<i><i>A", [(8, 9)], "tags", tokens=tokens))
        'Q:¦⟪<i>×2⟫⟦¦A⟧'
    """
    parts, inside, in_media, previous = [], False, False, None
    for owner, start, end, trained, media, count in _runs(rendering):
        if in_media and not media:
            parts.append("⟫")
        if trained != inside:
            parts.append("⟦" if trained else "⟧")
            inside = trained
        if rendering.tokens is not None and owner is not None and owner != previous and start > 0:
            parts.append("¦")
        if media and not in_media:
            parts.append("⟪")
        in_media = media
        previous = owner
        parts.append(rendering.text[start:end] + (f"×{count}" if count > 1 else ""))
    parts += ["⟫"] if in_media else []
    if inside:
        parts.append("⟧")
    return "".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; background: #ffffff; }
h1 { font-size: 1.2rem; } .meta, .legend { color: #57606a; font-size: .9rem; }
pre#render { white-space: pre-wrap; word-break: break-all; font: 14px/1.7 ui-monospace, monospace;
  border: 1px solid #d0d7de; border-radius: 6px; padding: 1rem; background: #ffffff; }
.trained { background: #aceebb; }
.tok { outline: 1px solid rgba(31, 35, 40, .25); outline-offset: -1px; border-radius: 2px; }
.tok.alt { outline-color: rgba(9, 105, 218, .55); }
.tok.mask { text-decoration: underline 2px #1a7f37; text-underline-offset: 3px; }
.tok.media { background: #f0d4f5; }
.key { padding: 0 .4rem; border-radius: 3px; } .key.on { background: #aceebb; }
"""


def to_html(rendering: Rendering, title: str) -> str:
    """A self-contained HTML page: the rendered text in `<pre id="render">`, each trained run of characters in a
    `<span class="trained">`, each token (with a tokenizer) in a `<span class="tok" data-id=…>` with class `mask`
    when its mask is 1. Inline CSS only: no scripts, no external files.

    Example:
        >>> page = to_html(Rendering("Q: hi A: yo</s>", [(9, 15)], "tags"), "demo")
        >>> '<span class="trained">yo&lt;/s&gt;</span>' in page
        True
    """

    def escape(text: str) -> str:
        # A CR would become LF when the page is parsed; a character reference keeps it exact.
        return html.escape(text, quote=False).replace("\r", "&#13;")

    body: list[str] = []
    open_token: int | None = None
    for owner, start, end, trained in _segments(rendering):
        if owner != open_token:
            if open_token is not None:
                body.append("</span>")
            if owner is not None:
                token = rendering.tokens[owner]
                classes = "tok" + (" alt" if owner % 2 else "") + (" mask" if token.trained else "")
                classes += " media" if token.media else ""
                tip = f"token {owner}: id {token.id} {token.piece!r}" + (" (trained)" if token.trained else "")
                tip += " (media)" if token.media else ""
                tip = html.escape(tip)
                body.append(f'<span class="{classes}" data-index="{owner}" data-id="{token.id}" title="{tip}">')
            open_token = owner
        piece = escape(rendering.text[start:end])
        body.append(f'<span class="trained">{piece}</span>' if trained else piece)
    if open_token is not None:
        body.append("</span>")
    notes = "".join(f'<p class="meta">{html.escape(note)}</p>' for note in rendering.notes)
    token_key = ' <span class="key tok">token</span> <span class="key tok mask">token with mask 1</span>'
    if any(token.media for token in rendering.tokens or []):
        token_key += ' <span class="key tok media">media token (never trained)</span>'
    legend = '<span class="key on">trained</span> <span class="key">not trained</span>' + (
        token_key if rendering.tokens is not None else ""
    )
    # The newline right after <pre> is eaten by the HTML parser; writing one keeps a leading newline of the text.
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>templatekit show: {html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="meta">{html.escape(summary(rendering))}</p>\n{notes}'
        f'<p class="legend">{legend}</p>\n<pre id="render">\n{"".join(body)}</pre>\n</body>\n</html>\n'
    )
