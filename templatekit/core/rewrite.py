"""Turn planned regions into text edits, apply edits, and strip existing generation tags.

Tags are inserted so that the rendered text cannot change: a tag put where a `{{-`/`{%-` stood takes over
its `-`; a tag put after `-}}`/`-%}` takes over that `-`; a tag that would swallow a rendered newline
(trim_blocks) is followed by an extra newline for it to swallow; a tag that lstrip_blocks would strip
indentation for is put before the indentation instead. Verification then proves the result.
"""

from __future__ import annotations

import re

from ..errors import PlanError
from .analysis import Item, Stmt
from .guards import Guard
from .regions import Cut, Edit, Region
from .syntax import ParsedTemplate
from .tags import END_TAG, START_TAG, end_tag, start_tag


def apply_edits(source: str, edits: list[Edit]) -> str:
    """Apply non-overlapping edits to `source`.

    Example:
        >>> apply_edits("abcd", [Edit(1, 1, "X"), Edit(2, 3, "Y")])
        'aXbYd'
    """
    out, cursor = [], 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if edit.start < cursor:
            raise PlanError(f"overlapping edits at offset {edit.start}")
        out.append(source[cursor : edit.start])
        out.append(edit.text)
        cursor = edit.end
    out.append(source[cursor:])
    return "".join(out)


class _Writer:
    def __init__(self, parsed: ParsedTemplate):
        self.source = parsed.source
        self.data_ending_at = {t.end: t for t in parsed.tokens if t.type == "data"}
        self.data_tokens = [t for t in parsed.tokens if t.type == "data"]

    def _indent_start(self, position: int) -> int:
        """Where rendered indentation before `position` begins, if lstrip_blocks would eat it; else position."""
        token = next((t for t in self.data_tokens if t.start < position <= t.end), None)
        if token is None:
            return position
        line_start = self.source.rfind("\n", 0, position) + 1
        prefix_start = max(line_start, token.start)
        prefix = self.source[prefix_start:position]
        if prefix and not prefix.strip(" \t") and (prefix_start == line_start):
            return prefix_start
        return position

    def _past_stripped_indent(self, position: int) -> int:
        """Past indentation that lstrip_blocks strips because a block tag follows it on its line.

        A tag put before such indentation would make it the tag's trailing text, which is rendered.
        """
        match = re.match(r"[ \t]+(?=\{%(?![-+]))", self.source[position:])
        line_start = self.source.rfind("\n", 0, position) + 1
        if match and not self.source[line_start:position].strip(" \t"):
            return position + match.end()
        return position

    def open_position(self, cut: Cut) -> tuple[int, int, str, str]:
        """(edit start, edit end, text before the opening tags, left marker) for a region's start."""
        if cut.operator is not None:
            return cut.operator.start, cut.operator.end, cut.operator.left + " }}", ""
        position = self._past_stripped_indent(cut.offset)
        if self.source.startswith(("{{-", "{%-"), position):
            return position, position, "", "-"
        if isinstance(cut.item, Stmt):
            return position, position, "", ""
        position = self._indent_start(position)
        return position, position, "", ""

    def close_position(self, cut: Cut) -> tuple[int, int, str, str]:
        """(edit start, edit end, text after the closing tags, right marker) for a region's end."""
        if cut.operator is not None:
            return cut.operator.start, cut.operator.end, "{{ " + cut.operator.right, ""
        position = self._past_stripped_indent(cut.offset)
        if self.source[:position].endswith(("-}}", "-%}")):
            return position, position, "", "-"
        if cut.side == "split":
            position = self._indent_start(position)
        return position, position, self.newline_to_eat(position, cut), ""

    def newline_to_eat(self, position: int, cut: Cut) -> str:
        """A newline when a tag put at `position` would eat a rendered one (trim_blocks), so it eats this one
        instead; "" when the next tag strips the whitespace anyway (`{%-`, `{{-`)."""
        stripped_anyway = re.match(r"\s*\{[%{#]-", self.source[position:]) is not None
        needs = self.source.startswith("\n", position) and not isinstance(cut.item, Stmt) and not stripped_anyway
        return "\n" if needs else ""

    def region_text(self, region: Region, open_end: int, close_start: int) -> str:
        text = self.source[open_end:close_start]
        if region.start.operator is not None:
            text = "{{ " + region.start.operator.right + text
        if region.end.operator is not None:
            text = text + region.end.operator.left + " }}"
        return text


def region_edits(parsed: ParsedTemplate, region: Region, condition: Guard | None) -> list[Edit]:
    """The edits that wrap `region` in generation tags, guarded by `condition` when given."""
    writer = _Writer(parsed)
    open_start, open_end, before, left = writer.open_position(region.start)
    close_start, close_end, after, right = writer.close_position(region.end)
    if region.alternative is not None:
        # Written twice under the test of the `if` that began the turn before it: all of it generated when
        # that branch ran, else opened inside its first output like a turn of its own.
        if open_start >= close_start:
            raise PlanError("a region that opens the turn in some renders must hold more than one output")
        opening = region_edits(parsed, region.alternative, None)[0]
        inner = [edit for nested in region.nested for edit in region_edits(parsed, nested, None)]
        if not all(open_end <= edit.start <= edit.end <= close_start for edit in [opening, *inner]):
            raise PlanError("a region and its alternative do not cover the same outputs")
        shifted = [Edit(edit.start - open_end, edit.end - open_end, edit.text) for edit in [opening, *inner]]
        alternative = apply_edits(parsed.source[open_end:close_start], shifted)
        if region.start.operator is not None:
            alternative = "{{ " + region.start.operator.right + alternative
        if region.end.operator is not None:
            alternative += region.end.operator.left + " }}"
        body = writer.region_text(region, open_end, close_start)
        if condition is None:
            return [
                Edit(
                    open_start,
                    close_end,
                    _if_else(before, left, region.condition, body, alternative + END_TAG, right, after),
                )
            ]
        # Also guarded by role: that choice for trained messages, the outputs as they were for the others.
        choice = _if_else("", "", region.condition, body, alternative + END_TAG, "", "")
        return [
            Edit(
                open_start,
                close_end,
                f"{before}{{%{left} if {condition} %}}{choice}{{% else %}}{body}{{% endif {right}%}}{after}",
            )
        ]
    opening_tag = start_tag(left)
    if region.start.operator is None and not left:
        opening_tag += writer.newline_to_eat(open_end, region.start)
    if condition is None:
        closing_tag = end_tag(right)
        return [
            Edit(
                open_start,
                open_end,
                before + opening_tag + ("{{ " + region.start.operator.right if region.start.operator else ""),
            ),
            Edit(
                close_start,
                close_end,
                (region.end.operator.left + " }}" if region.end.operator else "") + closing_tag + after,
            ),
        ]
    if open_start >= close_start:
        raise PlanError("a guarded region must not start and end inside one output")
    body = writer.region_text(region, open_end, close_start)
    return [Edit(open_start, close_end, _if_else(before, left, condition, body, body, right, after))]


def _block(text_before: str, tag: str, right: str = "") -> str:
    """A block tag `{% tag %}` written after `text_before`; `{%+` where lstrip_blocks would strip the indentation
    that ends `text_before` (the tag would start its line). `right` is its closing whitespace marker."""
    plus = "+" if re.search(r"(?:^|\n)[ \t]+$", text_before) else ""
    return "{%" + plus + " " + tag + " " + right + "%}"


def choice_edit(
    parsed: ParsedTemplate, head: Item, tail: Item, branches: list[tuple[Guard, list[Edit]]], otherwise: list[Edit]
) -> Edit:
    """The run of items `head`..`tail` written once per branch, each with its own edits applied, under its test:
    `{% if test %}…{% elif test %}…{% else %}…{% endif %}`, with the whitespace markers the run had.

    Example:
        >>> from templatekit.core.analysis import build_flow
        >>> from templatekit.core.syntax import parse_template
        >>> parsed = parse_template("{% for m in messages %}{{ m.content }}{% endfor %}")
        >>> unit = build_flow(parsed).units[0]
        >>> tagged = [Edit(unit.start, unit.start, START_TAG), Edit(unit.end, unit.end, END_TAG)]
        >>> apply_edits(parsed.source, [choice_edit(parsed, unit, unit, [(Guard("think"), tagged)], [])])
        '{% for m in messages %}{% if think %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}'
    """
    writer = _Writer(parsed)
    open_start, open_end, _, left = writer.open_position(Cut(head, "before", head.start))
    close_start, close_end, after, right = writer.close_position(Cut(tail, "after", tail.end))
    lead = writer.newline_to_eat(open_end, Cut(head, "before", head.start))

    def written(edits: list[Edit]) -> str:
        shifted = [Edit(e.start - open_end, e.end - open_end, e.text) for e in edits]
        return lead + apply_edits(parsed.source[open_end:close_start], shifted)

    (test, edits), *others = branches
    text = "{%" + left + f" if {test} %}}" + written(edits)
    for test, edits in others:
        text += _block(text, f"elif {test}") + written(edits)
    text += _block(text, "else") + written(otherwise)
    return Edit(open_start, close_end, text + _block(text, "endif", right) + after)


def _if_else(before: str, left: str, condition: Guard, tagged: str, otherwise: str, right: str, after: str) -> str:
    """`{% if condition %}{% generation %}tagged{% endgeneration %}{% else %}otherwise{% endif %}`, with the
    whitespace markers the replaced text had. A part that starts with a newline gets one more, for the block tag
    before it to eat (trim_blocks)."""
    tagged, otherwise = ("\n" + part if part.startswith("\n") else part for part in (tagged, otherwise))
    return (
        f"{before}{{%{left} if {condition} %}}{START_TAG}{tagged}{END_TAG}"
        f"{{% else %}}{otherwise}{{% endif {right}%}}{after}"
    )
