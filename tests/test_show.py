"""`templatekit show`: the page a browser renders highlights exactly the trained spans, token by token.

The HTML test loads the page in headless Chromium (Debian's `chromium`; `.ci/run` installs it when missing) and
reads the highlighted text back through the DOM and the computed CSS. Expected spans come from the span
renderer and are checked against the probe conversations' sentinels (every trained speaker's text inside, every
system, user and tool text outside), and, for patchable templates, against transformers' own tag spans.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _cli import run
from _paths import corpus_file
from tokenizers_offline import with_chat_template
from transformers.utils.chat_template_utils import render_jinja_template

import templatekit
from templatekit.cli.highlight import DEMO_CONVERSATIONS
from templatekit.core.probes import SPECIAL_TOKENS, build_probes
from templatekit.core.verify import merge_adjacent
from templatekit.training.masks import spans_to_token_mask
from templatekit.training.spans import render_with_spans

CHROMIUM = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)

# Reads the rendered page back: every text node of #render with its offset, whether it sits in a .trained
# element, and whether the browser actually paints it differently from the page background; every token element.
PROBE_SCRIPT = """
<script>
const root = document.getElementById("render");
const plain = getComputedStyle(root).backgroundColor;
const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
const runs = [];
let position = 0;
while (walker.nextNode()) {
  const node = walker.currentNode;
  const element = node.parentElement;
  const background = getComputedStyle(element).backgroundColor;
  runs.push({
    start: position,
    end: position + node.data.length,
    text: node.data,
    highlighted: element.closest(".trained") !== null,
    painted: background !== plain && background !== "rgba(0, 0, 0, 0)",
  });
  position += node.data.length;
}
const tokens = Array.from(root.querySelectorAll(".tok")).map((el) => ({
  index: Number(el.dataset.index), id: Number(el.dataset.id), text: el.textContent, mask: el.classList.contains("mask"),
}));
const out = document.createElement("pre");
out.id = "result";
out.textContent = JSON.stringify({text: root.textContent, runs: runs, tokens: tokens});
document.body.appendChild(out);
</script>
"""


class _ResultReader(HTMLParser):
    """Picks the text of `<pre id="result">` out of Chromium's dumped DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag, attrs) -> None:
        self.inside = self.inside or (tag == "pre" and ("id", "result") in attrs)

    def handle_endtag(self, tag) -> None:
        if tag == "pre":
            self.inside = False

    def handle_data(self, data) -> None:
        if self.inside:
            self.text += data


class _PageReader(HTMLParser):
    """Without a browser: the text of `<pre id="render">` and the ranges inside `.trained` elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[set[str]] = []
        self.text = ""
        self.trained: list[tuple[int, int]] = []
        self.tags: list[str] = []
        self.at_pre_start = False

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if self.stack or (tag == "pre" and attributes.get("id") == "render"):
            self.at_pre_start = not self.stack
            self.stack.append(set((attributes.get("class") or "").split()))

    def handle_endtag(self, tag) -> None:
        if self.stack:
            self.stack.pop()

    def handle_data(self, data) -> None:
        if self.stack:
            if self.at_pre_start and data.startswith("\n"):
                data = data[1:]  # as in browsers: a newline right after <pre> is not content
            self.at_pre_start = False
            if any("trained" in classes for classes in self.stack):
                self.trained.append((len(self.text), len(self.text) + len(data)))
            self.text += data


def browser_view(page: Path, tmp_path: Path) -> dict:
    """Load the page (plus the probe script) in headless Chromium and return what the script read."""
    assert CHROMIUM
    harness = tmp_path / "harness.html"
    harness.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE_SCRIPT + "</body>"), "utf-8")
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reader = _ResultReader()
    reader.feed(result.stdout)
    assert reader.text, f"the probe script did not run: {result.stdout[:500]}"
    return json.loads(reader.text)


def ranges(runs: list[dict], key: str) -> list[tuple[int, int]]:
    return merge_adjacent([(run["start"], run["end"]) for run in runs if run[key]])


def write_probe(probe, path: Path) -> Path:
    path.write_text(json.dumps({"messages": probe.messages, "tools": probe.tools}), encoding="utf-8")
    return path


def expected_spans(template: str, probe, fallback: bool | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The renderer's spans, checked against the probe's sentinels before any page is looked at."""
    options = {"fallback": True} if fallback else {}
    text, spans = render_with_spans(template, probe.messages, tools=probe.tools, **SPECIAL_TOKENS, **options)
    spans = merge_adjacent(spans)
    for sentinel in probe.sentinels:
        at = text.find(sentinel.text)
        if at < 0:
            continue  # a template may leave out e.g. tool schemas
        inside = any(s <= at and at + len(sentinel.text) <= e for s, e in spans)
        assert inside == (sentinel.role == "assistant"), (sentinel, text)
    return text, spans


def tag_spans(template: str, probe) -> list[tuple[int, int]]:
    """transformers' own spans for the verified patched template (independent of the span renderer)."""
    patched = templatekit.patch_template(template).template
    _, spans = render_jinja_template(
        conversations=[probe.messages],
        chat_template=patched,
        tools=probe.tools,
        return_assistant_tokens_mask=True,
        **SPECIAL_TOKENS,
    )
    return merge_adjacent([tuple(span) for span in spans[0]])


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("qwen")
    tokenizer = with_chat_template(qwen_tokenizer, None)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------- browser


CASES = [
    # (template, probe, tokenizer fixture or None, spans found by: "tags", or "delimiters" asked with --fallback)
    ("library:chatml", "tool_call_with_content", "qwen", "tags"),
    ("trl/qwen2_5.jinja", "multi_turn", "qwen", "tags"),
    ("trl/llama3_1.jinja", "multi_turn", None, "tags"),
    ("trl/qwen3_5_nothink.jinja", "multi_turn", "qwen", "delimiters"),
    ("inline:odd", "multi_turn", None, "tags"),
]
# Text that starts with a newline and holds a CR: both must survive HTML parsing unchanged.
ODD_TEMPLATE = "{% for m in messages %}{{ '\\n[' + m.role + ']\\r\\n' + m.content + '<end>\\n' }}{% endfor %}"


def template_text(name: str) -> str:
    if name == "inline:odd":
        return ODD_TEMPLATE
    if name.startswith("library:"):
        return templatekit.get_template(name.split(":", 1)[1])
    return corpus_file(name).read_text(encoding="utf-8")


@pytest.mark.subprocess
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it); see the html.parser test")
@pytest.mark.parametrize(("name", "probe_name", "tokenizer", "mode"), CASES)
def test_chromium_highlights_exactly_the_trained_spans(
    capsys, tmp_path: Path, qwen_folder: Path, qwen_tokenizer, name, probe_name, tokenizer, mode
) -> None:
    template = template_text(name)
    source = tmp_path / "chat_template.jinja"
    source.write_text(template, encoding="utf-8")
    probe = next(p for p in build_probes() if p.name == probe_name)
    text, spans = expected_spans(template, probe, fallback=mode == "delimiters")
    if mode == "tags":
        assert spans == tag_spans(template, probe)
    page = tmp_path / "show.html"
    argv = ["show", source, "--messages", write_probe(probe, tmp_path / "conv.json"), "--html", page]
    if mode == "delimiters":
        argv.append("--fallback")
    if tokenizer:
        argv += ["--tokenizer", qwen_folder / "tokenizer.json"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert f"trained spans from {'verified generation tags' if mode == 'tags' else 'delimiter fallback'}" in err

    view = browser_view(page, tmp_path)
    assert view["text"] == text  # the page shows the rendering, character for character
    assert ranges(view["runs"], "highlighted") == spans  # exactly the trained spans are marked ...
    assert ranges(view["runs"], "painted") == spans  # ... and the browser paints exactly those
    if tokenizer:
        encoding = qwen_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        assert [t["id"] for t in view["tokens"]] == encoding["input_ids"]  # one element per token
        assert [t["text"] for t in view["tokens"]] == [text[s:e] for s, e in offsets]
        assert [int(t["mask"]) for t in view["tokens"]] == spans_to_token_mask(offsets, spans)
    else:
        assert view["tokens"] == []


# -------------------------------------------------------------------------------------------- without a browser


def test_html_page_is_self_contained_and_marks_trained_spans(capsys, tmp_path: Path) -> None:
    """The same check through Python's html.parser: text intact (including a leading newline and a CR), trained
    ranges exact, and nothing the page would fetch or run."""
    template = ODD_TEMPLATE
    source = tmp_path / "odd.jinja"
    source.write_text(template, encoding="utf-8")
    probe = next(p for p in build_probes() if p.name == "multi_turn")
    text, spans = expected_spans(template, probe)
    assert text.startswith("\n") and "\r" in text
    page = tmp_path / "page.html"
    code, _, err = run(capsys, "show", source, "--messages", write_probe(probe, tmp_path / "c.json"), "--html", page)
    assert code == 0, err
    html_text = page.read_text(encoding="utf-8")
    reader = _PageReader()
    reader.feed(html_text)
    assert reader.text == text
    assert merge_adjacent(reader.trained) == spans
    assert "script" not in reader.tags and "link" not in reader.tags and "img" not in reader.tags
    assert not re.search(r"(src|href)\s*=|url\(|@import|https?://", html_text)


# ---------------------------------------------------------------------------------------------------- terminal


@pytest.mark.slow
def test_plain_output_brackets_trained_text_and_marks_tokens(capsys, tmp_path: Path, qwen_folder: Path) -> None:
    template = templatekit.get_template("chatml")
    source = tmp_path / "chatml.jinja"
    source.write_text(template, encoding="utf-8")
    probe = next(p for p in build_probes() if p.name == "multi_turn")
    text, spans = expected_spans(template, probe)
    code, out, err = run(capsys, "show", source, "--messages", write_probe(probe, tmp_path / "c.json"))
    assert code == 0, err
    shown = out[:-1]  # the final newline is the command's
    assert shown.replace("⟦", "").replace("⟧", "") == text
    bracketed = [m.group(1) for m in re.finditer("⟦(.*?)⟧", shown, flags=re.S)]
    assert bracketed == [text[s:e] for s, e in spans]

    code, out, err = run(capsys, "show", source, "--messages", tmp_path / "c.json", "--tokenizer", qwen_folder)
    assert code == 0, err
    assert "¦" in out and out[:-1].replace("⟦", "").replace("⟧", "").replace("¦", "") == text
    assert re.search(r"of \d+ tokens trained", err)


def test_rich_terminal_rendering_styles_exactly_the_trained_text() -> None:
    from templatekit.cli.highlight import render_conversation, to_rich

    probe = next(p for p in build_probes() if p.name == "multi_turn")
    rendering = render_conversation(templatekit.get_template("llama3"), probe.messages, **SPECIAL_TOKENS)
    styled = to_rich(rendering)
    assert styled.plain == rendering.text
    green = merge_adjacent([(span.start, span.end) for span in styled.spans if "on green3" in str(span.style)])
    assert green == rendering.spans


def test_demo_conversation_falls_back_to_what_the_template_accepts(capsys) -> None:
    # Gemma's template rejects a system message and tool turns: the demo without them is shown.
    code, out, err = run(capsys, "show", corpus_file("trl/gemma.jinja"))
    assert code == 0, err
    assert f"{DEMO_CONVERSATIONS[-1][0]};" in err
    assert "⟦No need: no rain is expected today.<end_of_turn>⟧" in out
    code, out, err = run(capsys, "show", corpus_file("trl/qwen2_5.jinja"))
    assert code == 0 and f"{DEMO_CONVERSATIONS[0][0]};" in err
    assert re.search(r'⟦[^⟦⟧]*<tool_call>[^⟦⟧]*"city": "Paris"[^⟦⟧]*</tool_call><\|im_end\|>⟧', out), out


def test_show_reports_bad_input_with_its_place(capsys, tmp_path: Path) -> None:
    source = corpus_file("trl/qwen2_5.jinja")
    bad = tmp_path / "conv.json"
    bad.write_text('[{"role": "user", "content": "hi"},\n {"role": "assistant" "content": "x"}]', encoding="utf-8")
    code, _, err = run(capsys, "show", source, "--messages", bad)
    assert code == 2 and f"{bad}:2:" in err and "invalid JSON" in err
    bad.write_text('{"messages": "hello"}', encoding="utf-8")
    code, _, err = run(capsys, "show", source, "--messages", bad)
    assert code == 2 and "list of messages" in err
    code, _, err = run(capsys, "show", source, "--tokenizer", tmp_path / "nothing")
    assert code == 2 and "no such tokenizer" in err
    code, _, err = run(capsys, "show", source, "--name", "rag")
    assert code == 2 and "no template named 'rag'" in err
    # A conversation the template rejects (Gemma has no system role) is an input error, named as such.
    bad.write_text(json.dumps([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]), "utf-8")
    code, _, err = run(capsys, "show", corpus_file("trl/gemma.jinja"), "--messages", bad)
    assert code == 2 and str(bad) in err


def test_show_explains_a_template_it_cannot_mask(capsys, tmp_path: Path) -> None:
    # The text the model sees is not the messages' text: neither tags nor delimiters can say what is trained.
    source = tmp_path / "upper.jinja"
    source.write_text("{% for m in messages %}{{ m.role }}: {{ m.content | upper }}\n{% endfor %}", encoding="utf-8")
    with pytest.raises(templatekit.TemplateKitError):
        render_with_spans(source.read_text(encoding="utf-8"), build_probes()[0].messages, **SPECIAL_TOKENS)
    code, out, err = run(capsys, "show", source)
    assert code == 1 and out == ""
    assert "cannot tell what is trained" in err and "\n  - " in err
