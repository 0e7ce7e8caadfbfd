"""From traced probes to text edits: where `{% generation %}` and `{% endgeneration %}` go.

For every trained turn of every probe we know the expected span (layout.py) and which unit wrote each
character (analysis.py). The span's first and last characters become cut points in the source: before or
after a unit, inside literal text, or between two operands of a `+`/`~` chain (the output is split there).
Both cuts are lifted to the innermost body that holds them both, because a generation block must open and
close in the same statement list. Regions that the render also enters for untrained messages get a guard
(`{% if message.role in [...] %}`) and the region is written twice, tagged and untagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import nodes

from .analysis import Body, Emission, Flow, Item, Unit
from .layout import Layout

START_TAG = "{% generation %}"
END_TAG = "{% endgeneration %}"


class PlanError(Exception):
    """A turn's span cannot be expressed with tags in the top-level flow."""


@dataclass(frozen=True)
class Edit:
    """Replace `source[start:end]` with `text`."""

    start: int
    end: int
    text: str


@dataclass
class Cut:
    """A place in the source where a tag can go: before/after `item`, or splitting it at `offset`.

    For a split expression, `operator` is `(start, end, left, right)`: `source[start:end]` (an operator
    token or a string literal) becomes `left + " }}" + tag + "{{ " + right`.
    """

    item: Item
    side: str  # "before" | "after"
    offset: int  # source offset of the cut
    operator: tuple[int, int, str, str] | None = None


@dataclass
class Region:
    """A run of items `body.items[first..last]` to wrap, with optional split cuts at either end."""

    body: Body
    first: int
    last: int
    start: Cut
    end: Cut
    targets: set[str] = field(default_factory=set)
    guard: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.start.offset, self.end.offset)


def _cut_at(flow: Flow, emission: Emission, offset_in_unit: int, side: str) -> Cut:
    unit = flow.units[emission.uid]
    source = flow.parsed.source
    if offset_in_unit == 0 and side == "before":
        return Cut(unit, "before", unit.start)
    if offset_in_unit == len(emission.text) and side == "after":
        return Cut(unit, "after", unit.end)
    if unit.kind == "data":
        if source[unit.start : unit.end] != unit.node.data:
            raise PlanError(f"literal text at {_where(flow, unit.start)} does not match its source")
        return Cut(unit, "split", unit.start + offset_in_unit)
    if unit.parts and emission.parts and all(isinstance(part, str) for part in emission.parts):
        operands = [(node, (op_start, op_end), value) for (node, op_start, op_end), value in zip(unit.parts, emission.parts)]
    else:
        operands = [(unit.node, None, emission.text)]
    boundary = 0
    for position, (node, operator, value) in enumerate(operands):
        if boundary == offset_in_unit and position > 0:
            op_start, op_end = operator
            while source[op_start - 1] in " \t":
                op_start -= 1
            while source[op_end] in " \t":
                op_end += 1
            return Cut(unit, "split", op_start, (op_start, op_end, "", ""))
        if boundary < offset_in_unit < boundary + len(value):
            literal = _literal_token(flow, node, value)
            if literal is not None:
                cut = offset_in_unit - boundary
                left, right = _encode(value[:cut], literal.value[0]), _encode(value[cut:], literal.value[0])
                return Cut(unit, "split", literal.start, (literal.start, literal.end, left, right))
            break
        boundary += len(value)
    raise PlanError(
        f"the output at {_where(flow, unit.start)} mixes header and generated text "
        f"and cannot be split at character {offset_in_unit} of {emission.text!r}"
    )


def _literal_token(flow: Flow, node, value: str):
    """The single string token that spells `node`, when `node` is a plain string literal."""
    if not isinstance(node, nodes.Const) or not isinstance(node.value, str) or node.value != value:
        return None
    token = flow.parsed.tokens[flow.parsed.token_index_at(node.lineno.offset)]
    if token.type != "string" or len(token.value) < 2:
        return None
    return token


def _encode(text: str, quote: str) -> str:
    escaped = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return quote + escaped + quote


def _where(flow: Flow, offset: int) -> str:
    from .syntax import line_column

    line, column = line_column(flow.parsed.source, offset)
    return f"line {line}, column {column}"


def _emission_at(emissions: list[Emission], char: int) -> Emission:
    for emission in emissions:
        if emission.start <= char < emission.end:
            return emission
    raise PlanError(f"no output unit wrote character {char}")


def region_for_turn(flow: Flow, emissions: list[Emission], start: int, end: int) -> Region:
    """The region whose tags would produce the span `[start, end)` in this render."""
    first = _emission_at(emissions, start)
    last = _emission_at(emissions, end - 1)
    first_unit, last_unit = flow.units[first.uid], flow.units[last.uid]
    start_bodies = first_unit.body.ancestors()
    common = next(body for body in last_unit.body.ancestors() if body in start_bodies)
    first_item, last_item = first_unit.lift_to(common), last_unit.lift_to(common)
    if first_item is first_unit:
        start_cut = _cut_at(flow, first, start - first.start, "before")
    else:
        start_cut = Cut(first_item, "before", first_item.start)
    if last_item is last_unit:
        end_cut = _cut_at(flow, last, end - last.start, "after")
    else:
        end_cut = Cut(last_item, "after", last_item.end)
    if first_item.index > last_item.index or (first_item is last_item and start_cut.offset >= end_cut.offset):
        raise PlanError(f"the span starting at {_where(flow, start_cut.offset)} ends before it starts")
    return Region(common, first_item.index, last_item.index, start_cut, end_cut)


def units_in(region: Region) -> list[Unit]:
    """Every unit inside the region, nested statements included."""
    found: list[Unit] = []

    def collect(item: Item) -> None:
        if isinstance(item, Unit):
            found.append(item)
        else:
            for body in item.bodies:
                for inner in body.items:
                    collect(inner)

    for item in region.body.items[region.first : region.last + 1]:
        collect(item)
    return found


def merge_regions(regions: list[Region]) -> list[Region]:
    """Drop duplicates and regions nested in others; merge overlapping regions of one body."""
    unique: dict[tuple[int, int], Region] = {}
    for region in regions:
        kept = unique.setdefault(region.key, region)
        kept.targets |= region.targets
        kept.guard |= region.guard
    ordered = sorted(unique.values(), key=lambda r: (r.start.offset, -r.end.offset))
    merged: list[Region] = []
    for region in ordered:
        if merged and region.start.offset < merged[-1].end.offset:
            outer = merged[-1]
            if region.end.offset <= outer.end.offset:
                outer.targets |= region.targets
                outer.guard |= region.guard
                continue
            if region.body is not outer.body:
                raise PlanError(
                    f"spans overlap without nesting at {_where_region(outer)} and {_where_region(region)}"
                )
            outer.last, outer.end = region.last, region.end
            outer.targets |= region.targets
            outer.guard |= region.guard
            continue
        merged.append(region)
    return merged


def _where_region(region: Region) -> str:
    return f"offset {region.start.offset}"


def plan_regions(flow: Flow, traces: list[tuple[Layout, list[Emission]]], trained_roles_of) -> list[Region]:
    """Regions for every trained turn of every traced probe, merged, each marked with whether it needs a guard.

    `trained_roles_of(layout)` returns the set of message indices trained in that probe.
    """
    regions: list[Region] = []
    for layout, emissions in traces:
        for turn in layout.turns:
            if turn.end <= turn.start:
                continue
            regions.append(region_for_turn(flow, emissions, turn.start, turn.end))
    regions = merge_regions(regions)
    for region in regions:
        uids = {unit.uid for unit in units_in(region)}
        for layout, emissions in traces:
            trained = trained_roles_of(layout)
            for emission in emissions:
                if emission.uid not in uids or not emission.text:
                    continue
                if emission.message is not None:
                    unit = flow.units[emission.uid]
                    region.targets.add(unit.loop_targets[emission.target])
                    if emission.message not in trained:
                        region.guard = True
    return regions
