"""Taking the generation tags out for deployment: `strip_template`, `templatekit strip`, the GGUF warning.

On every corpus template that patches: the stripped patch renders like the patch (and so like the original) on
every probe; where the patch only inserted tags (and the newlines it adds for a tag to eat), it is the original
byte for byte. Where the patch did more (an output split at the header, a region written twice under an `if`),
render-identity is what holds, and the test says how many of each there are.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import pytest
from _cli import run
from _corpus import patched as corpus_patch
from _paths import corpus_dir, corpus_file

import templatekit
from templatekit.core.probes import build_probes
from templatekit.core.strip import strip_tags_text
from templatekit.core.tags import TAG, has_generation_tags
from templatekit.core.verify import render_probe
from templatekit.errors import StripError, TemplateKitError, TemplateSourceError

QWEN = "trl/qwen2_5.jinja"


def corpus_templates() -> list[Path]:
    files = sorted(corpus_dir().rglob("*.jinja"))
    assert files, f"no corpus under {corpus_dir()}"
    return files


def only_inserted_tags(original: str, patched: str) -> bool:
    """Whether `patched` is `original` with tags inserted, each optionally followed by one newline of its own."""
    pieces = TAG.split(patched)
    segments = pieces[::2]  # TAG has one group, so the split alternates text, group, text, ...

    @functools.lru_cache(maxsize=None)
    def fits(index: int, at: int) -> bool:
        if index == len(segments):
            return at == len(original)
        segment = segments[index]
        options = [segment] + ([segment[1:]] if index and segment.startswith("\n") else [])
        return any(original.startswith(option, at) and fits(index + 1, at + len(option)) for option in options)

    return fits(0, 0)


def renders_alike(a: str, b: str, *, where_first_renders: bool = False) -> bool:
    """The same text (or both an error) on every probe; or, `where_first_renders`, wherever `a` renders at all
    (as verification compares a patch with its original: a probe the original rejects is skipped)."""
    for probe in build_probes() + build_probes(blocks=True):
        x, y = render_probe(a, probe), render_probe(b, probe)
        if where_first_renders and x.error is not None:
            continue
        if (x.error is None) != (y.error is None) or x.text != y.text:
            return False
    return True


@pytest.mark.corpus
def test_strip_of_every_corpus_patch(corpus):
    counts = {"byte_identical": 0, "render_identical": 0}
    for path in corpus_templates():
        original = corpus.text(path)
        try:
            patched = corpus.patch(path)  # patch_template(original)
        except TemplateKitError:
            continue  # refused by the patcher: nothing to strip
        stripped = templatekit.strip_template(patched.template)  # raises StripError if any probe differs
        assert not has_generation_tags(stripped), path
        if has_generation_tags(original):
            continue  # retagged / already tagged: the original's own tags are not the patch's
        if only_inserted_tags(original, patched.template):
            assert stripped == original, path
            counts["byte_identical"] += 1
        else:
            assert renders_alike(stripped, patched.template), path
            # A split output may render block content the original rejects (exaone): compared where it renders.
            assert renders_alike(original, stripped, where_first_renders=True), path
            counts["render_identical"] += 1
    # As measured: 16 patches only insert tags, 95 also split outputs or write a region twice. A patch that no
    # longer only inserts tags, or one lost, fails; raise the floors as the patcher improves.
    assert counts["byte_identical"] >= 16, counts
    assert counts["byte_identical"] + counts["render_identical"] >= 111, counts


@pytest.mark.corpus
def test_strip_of_corpus_templates_that_ship_tags():
    tagged = [p for p in corpus_templates() if has_generation_tags(p.read_text(encoding="utf-8"))]
    assert tagged
    for path in tagged:
        text = path.read_text(encoding="utf-8")
        stripped = templatekit.strip_template(text)
        assert not has_generation_tags(stripped)
        assert renders_alike(text, stripped), path


@pytest.mark.parametrize(
    ("tagged", "expected"),
    [
        # A newline the tag ate goes with it (the patcher adds one for a tag to eat)...
        ("{% for m in messages %}{{ m.content }}{% generation %}\n\n{% endgeneration %}{% endfor %}",
         "{% for m in messages %}{{ m.content }}\n{% endfor %}"),
        # ... unless a block tag before it eats it anyway (then it was the original's).
        ("{% for m in messages %}{% if m %}{% endif %}{% generation %}\n{{ m.content }}{% endgeneration %}{% endfor %}",
         "{% for m in messages %}{% if m %}{% endif %}\n{{ m.content }}{% endfor %}"),
        # ... or a `{%-` after the blank text strips it.
        ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}\n  {%- if m %}x{% endif %}{% endfor %}",
         "{% for m in messages %}{{ m.content }}\n  {%- if m %}x{% endif %}{% endfor %}"),
        # Whitespace a `-` marker stripped goes, unless the neighbour strips it too.
        ("{% for m in messages %}{{ m.content }}  {%- generation -%}  {{ m.role }}{% endgeneration %}{% endfor %}",
         "{% for m in messages %}{{ m.content }}{{ m.role }}{% endfor %}"),
        ("{% for m in messages %}  {%- generation %}{{- m.content }}{% endgeneration %}{% endfor %}",
         "{% for m in messages %}  {{- m.content }}{% endfor %}"),
        # Indentation lstrip_blocks removed before a tag at the start of its line.
        ("{% for m in messages %}\n    {% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
         "{% for m in messages %}\n{{ m.content }}{% endfor %}"),
    ],
)  # fmt: skip
def test_whitespace_rules(tagged: str, expected: str):
    assert strip_tags_text(tagged) == expected
    assert templatekit.strip_template(tagged) == expected
    assert renders_alike(tagged, expected)


def test_untagged_template_is_returned_unchanged():
    text = corpus_file(QWEN).read_text(encoding="utf-8")
    assert templatekit.strip_template(text) is text


def test_a_strip_that_would_change_the_rendering_raises_with_reasons():
    # A generation block is a call block: a variable set inside it vanishes with it. Without the block it does
    # not, so removing the tags changes what is rendered.
    tagged = (
        "{% generation %}{% set x = 'y' %}{% endgeneration %}{{ x }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    with pytest.raises(StripError) as caught:
        templatekit.strip_template(tagged)
    assert isinstance(caught.value, TemplateKitError)
    assert caught.value.reasons and "rendering differs at character 0" in caught.value.reasons[0]
    assert len(caught.value.reasons) <= 6  # five probes, then how many more


def test_tags_in_comments_and_strings_are_not_tags():
    # TRL's templates mention `{% generation %}` in a comment: that text is not a tag, and stays.
    template = (
        "{# wrap with {% generation %} #}{{ '{% generation %}' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert not has_generation_tags(template)
    assert templatekit.strip_template(template) == template


def test_a_tag_that_kept_a_newline_from_a_later_dash_marker_is_stripped_exactly():
    # `{% generation %}` between `}}` and `{%-`: the newline before the tag is rendered (lstrip_blocks takes only
    # the indentation), but with the tag gone the `{%-` would strip it: it is written as a string instead.
    tagged = "{% for m in messages %}{{- m.role }}\n  {% generation %}\n  {%- if m %}{{ m.content }}{% endif %}{% endgeneration %}{% endfor %}"
    stripped = templatekit.strip_template(tagged)
    assert not has_generation_tags(stripped)
    assert renders_alike(tagged, stripped)
    assert '{{ "\\n" }}' in stripped


def test_malformed_template_is_a_source_error():
    with pytest.raises(TemplateSourceError, match=r"1:\d+"):
        templatekit.strip_template("{% generation %}{{ x }{% endgeneration %}")


def test_public_and_lazy():
    assert "strip_template" in templatekit.__all__ and "StripError" in templatekit.__all__


# --------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def patched_file(tmp_path: Path) -> tuple[Path, str, str]:
    original = corpus_file(QWEN).read_text(encoding="utf-8")
    patched = corpus_patch(QWEN).template
    path = tmp_path / "patched.jinja"
    path.write_text(patched, encoding="utf-8")
    return path, original, patched


def test_cli_strip_to_stdout(capsys, patched_file):
    path, original, _ = patched_file
    code, out, err = run(capsys, "strip", path)
    assert code == 0, err
    assert out == templatekit.strip_template(path.read_text(encoding="utf-8"))
    assert not has_generation_tags(out) and renders_alike(original, out, where_first_renders=True)
    assert "removed" in err and "renders identically" in err


def test_cli_strip_output_file_and_refuses_the_input(capsys, patched_file, tmp_path):
    path, _, patched = patched_file
    target = tmp_path / "deploy.jinja"
    code, _, err = run(capsys, "strip", path, "-o", target)
    assert code == 0, err
    assert target.read_text(encoding="utf-8") == templatekit.strip_template(patched)
    code, _, err = run(capsys, "strip", path, "-o", path)
    assert code == 2 and "refusing to overwrite the input" in err


def test_cli_strip_in_place_model_folder_keeps_a_backup(capsys, tmp_path):
    patched = corpus_patch(QWEN).template
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_max_length": 32768, "chat_template": patched, "eos_token": "<|im_end|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    code, _, err = run(capsys, "strip", folder, "--in-place")
    assert code == 0, err
    data = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert data == {**config, "chat_template": templatekit.strip_template(patched)}
    assert json.loads((folder / "tokenizer_config.json.bak").read_text(encoding="utf-8")) == config
    assert "backup" in err


def test_cli_strip_failure_writes_nothing_exit_1(capsys, tmp_path):
    path = tmp_path / "odd.jinja"
    path.write_text(
        "{% generation %}{% set x = 'y' %}{% endgeneration %}{{ x }}{% for m in messages %}{{ m.content }}{% endfor %}",
        encoding="utf-8",
    )
    target = tmp_path / "out.jinja"
    code, out, err = run(capsys, "strip", path, "-o", target)
    assert code == 1 and "cannot strip" in err and "nothing written" in err
    assert not target.exists()


def test_cli_strip_usage_and_input_errors(capsys, tmp_path):
    code, _, err = run(capsys, "strip", tmp_path / "missing.jinja")
    assert code == 2 and "error:" in err
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% generation %}\n{{ x }{% endgeneration %}", encoding="utf-8")
    code, _, err = run(capsys, "strip", bad)
    assert code == 2 and f"{bad}:2:" in err  # file:line:col: message


def test_cli_strip_without_tags_is_a_no_op(capsys, tmp_path):
    path = tmp_path / "plain.jinja"
    text = corpus_file(QWEN).read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, "strip", path)
    assert code == 0 and out == text and "no generation tags" in err


# --------------------------------------------------------------------------------------------------- GGUF


def test_gguf_with_tags_warns_and_strip_writes_a_clean_one(capsys, tmp_path):
    from _gguf import make_gguf

    from templatekit.errors import GenerationTagsWarning
    from templatekit.sources.gguf import read_gguf_templates, write_gguf_templates

    original = corpus_file(QWEN).read_text(encoding="utf-8")
    source = make_gguf(tmp_path / "model.gguf", {"default": original})
    patched = templatekit.patch_template(original).template

    with pytest.warns(GenerationTagsWarning, match=r"templatekit strip"):
        write_gguf_templates(source, tmp_path / "api.gguf", {"default": patched})

    tagged = tmp_path / "model.patched.gguf"
    code, _, err = run(capsys, "patch", source, "-o", tagged)
    assert code == 0, err
    assert "warning:" in err and "fail to load" in err and "templatekit strip" in err

    clean = tmp_path / "model.deploy.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenerationTagsWarning)  # an untagged file warns of nothing
        code, _, err = run(capsys, "strip", tagged, "-o", clean)
    assert code == 0, err and "warning:" not in err
    [template] = read_gguf_templates(clean)
    assert template.text == templatekit.strip_template(patched)
    assert renders_alike(original, template.text, where_first_renders=True)
