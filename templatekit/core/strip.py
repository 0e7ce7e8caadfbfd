"""Remove generation tags from a template, proven to render exactly as before: what to deploy after training.

Inference stacks that do not know `{% generation %}` (llama.cpp's Jinja engine, text-generation-webui, tabbyAPI)
fail to load a model whose saved template carries it, so the tags are for training only.

A tag is removed together with the whitespace it alone made disappear, so removal cannot change the text:

- a plain tag (`{% generation %}`) eats the newline right after it (trim_blocks): that newline goes with the tag
  unless something else would eat it as well (a block tag or comment before the tag, a `-}}`/`-%}` before it, or
  a `{%-`/`{{-`/`{#-` after the blank text), in which case it stays (the original as the patcher found it);
- a `-%}` marker strips the whitespace after it, a `{%-` marker the whitespace before it: that whitespace goes
  unless the neighbour on the other side strips it too;
- indentation before a plain tag at the start of its line (lstrip_blocks) goes unless a block tag follows it.

Where the patcher only inserted tags (and the newlines it adds for a tag to eat), the result is the original
byte for byte. The stripped template is then rendered beside the tagged one on the probe battery (with string
and with block content); any difference raises `StripError` with the reasons.
"""

from __future__ import annotations

from ..errors import StripError
from .probes import build_probes
from .sandbox import bounded
from .tags import has_generation_tags, strip_generation_tags
from .verify import render_probe

__all__ = ["strip_template", "strip_tags_text"]

_MAX_REASONS = 5


def strip_tags_text(source: str) -> str:
    """The template without its generation tags and the whitespace only they removed (not verified): see
    `tags.strip_generation_tags`.

    Example:
        >>> strip_tags_text("{{- x }}  {%- generation -%}  {{ y }}")
        '{{- x }}{{ y }}'
    """
    return strip_generation_tags(source)


@bounded  # timeout= and max_memory= (templatekit.core.sandbox): the limits on every probe render
def strip_template(template: str) -> str:
    """The template without generation tags, verified to render byte-identically on every probe.

    A template without tags is returned unchanged. Where the tags were only inserted (as `patch_template`
    does), the result is the untagged original byte for byte.

    Raises `StripError` (with `.reasons`) when the stripped template renders differently from the tagged one
    on some probe, or when no probe conversation renders at all (nothing could be verified);
    `TemplateSourceError` for a malformed template; `TemplateLimitError` past a limit.

    Example:
        >>> tagged = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
        >>> strip_template(tagged)
        '{% for m in messages %}{{ m.content }}{% endfor %}'
    """
    if not has_generation_tags(template):
        return template
    stripped = strip_tags_text(template)
    reasons = _differences(template, stripped)
    if reasons:
        raise StripError(reasons)
    return stripped


def _differences(tagged: str, stripped: str) -> list[str]:
    """Where the two templates render differently on the probe battery (empty when they never do)."""
    from .syntax import parse_template  # a malformed template is a TemplateSourceError naming the place

    parse_template(tagged)
    reasons: list[str] = []
    rendered = 0
    for probe in build_probes() + build_probes(blocks=True):
        before, after = render_probe(tagged, probe), render_probe(stripped, probe)
        if before.error is not None or after.error is not None:
            if (before.error is None) != (after.error is None):
                reasons.append(
                    f"probe {probe.name!r}: "
                    + (
                        f"the stripped template raises {after.error}"
                        if before.error is None
                        else f"the stripped template renders where the tagged one raises {before.error}"
                    )
                )
            continue
        rendered += 1
        if before.text != after.text:
            at = next(
                (i for i, (a, b) in enumerate(zip(before.text, after.text)) if a != b),
                min(len(before.text), len(after.text)),
            )
            reasons.append(
                f"probe {probe.name!r}: rendering differs at character {at}: "
                f"tagged {before.text[at : at + 30]!r}, stripped {after.text[at : at + 30]!r}"
            )
    if not rendered and not reasons:
        reasons.append("no probe conversation renders with this template, so the result cannot be verified")
    if len(reasons) > _MAX_REASONS:
        reasons = reasons[:_MAX_REASONS] + [f"and {len(reasons) - _MAX_REASONS} more probes differ"]
    return reasons
